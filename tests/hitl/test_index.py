"""The project's region index: built by discovery, grown by new images, one per model,
and two-stage queries that return what the exact dense scan returns."""

import json
from pathlib import Path

from engine.ann_index import AnnConfig, RegionIndex, region_descriptors
from engine.evaluate import load_annotations
from engine.features import CachedPyramids, FeatureCache, FeatureConfig
from engine.images import load_rgb
from hitl.cli import main
from hitl.discover import DiscoverConfig, run_discovery
from hitl.index import index_dir, open_project_index, query_project, update_index
from hitl.oneshot import load_project_collection, query_collection
from hitl.project import load_model, open_project

SMALL = FeatureConfig(max_side=12, n_scales=2)


def _pyramids(store, paths, model_id):
    hashes = {img.image_id: img.sha256 for img in store.list_images()}
    return CachedPyramids(FeatureCache(paths.features, model_id, SMALL), hashes)


def test_discovery_builds_the_index_of_its_model(tiny_project):
    store, paths = open_project(tiny_project)
    report = run_discovery(store, paths, DiscoverConfig(pairs="knn", k=1, features=SMALL), progress=False)
    folder = index_dir(paths, report.model_id, SMALL, AnnConfig())
    index, meta = RegionIndex.load(folder)
    assert meta["model_id"] == report.model_id and sorted(index.image_ids) == sorted(i.image_id for i in store.list_images())
    assert folder.is_relative_to(paths.data_dir / "index")


def test_new_images_are_added_without_rebuilding(tiny_project):
    store, paths = open_project(tiny_project)
    backbone = load_model(store, None, "cpu")
    ids = [img.image_id for img in store.list_images()]
    pyramids = _pyramids(store, paths, backbone.model_id)
    project = open_project_index(store, paths, backbone, SMALL)  # computes features, builds
    asked = []

    def counting(image_id):
        asked.append(image_id)
        return pyramids(image_id)

    first = update_index(paths, backbone.model_id, ids[:-1], counting, SMALL)
    assert asked == [] and len(first) == len(ids)  # nothing new: nothing read
    # an index built on fewer images grows by the missing one only
    ann = AnnConfig()
    folder = index_dir(paths, backbone.model_id, SMALL, ann)
    RegionIndex.build(ids[:-1], [region_descriptors(pyramids(i), ann.window, ann.stride, ann.blocks) for i in ids[:-1]]
                      ).save(folder, {"model_id": backbone.model_id})
    grown = update_index(paths, backbone.model_id, ids, counting, SMALL)
    assert asked == ids[-1:] and grown.image_ids == ids[:-1] + ids[-1:]
    assert RegionIndex.load(folder)[0].image_ids == grown.image_ids  # saved
    assert len(project.index) == len(ids)


def test_an_index_of_another_model_is_never_used(tiny_project):
    store, paths = open_project(tiny_project)
    backbone = load_model(store, None, "cpu")
    ids = [img.image_id for img in store.list_images()]
    pyramids = _pyramids(store, paths, backbone.model_id)
    open_project_index(store, paths, backbone, SMALL)
    folder = index_dir(paths, backbone.model_id, SMALL, AnnConfig())
    meta = json.loads((folder / "meta.json").read_text())
    meta["model_id"], meta["image_ids"] = "someone-else", meta["image_ids"][:2]
    (folder / "meta.json").write_text(json.dumps(meta))
    rebuilt = update_index(paths, backbone.model_id, ids, pyramids, SMALL)
    assert len(rebuilt) == len(ids) and RegionIndex.load(folder)[1]["model_id"] == backbone.model_id
    assert index_dir(paths, "effnet-lite0@1234abcd", SMALL, AnnConfig()) != folder


def test_two_stage_query_returns_the_exact_scans_top_hits(tiny_project):
    store, paths = open_project(tiny_project)
    backbone = load_model(store, None, "cpu")
    queries = load_annotations(Path(tiny_project).parent / "ground_truth.json")
    exact_collection = load_project_collection(store, paths, backbone, progress=False, feature_config=SMALL)
    project = open_project_index(store, paths, backbone, SMALL)
    by_name = {Path(img.path).name: img for img in store.list_images()}  # annotations name files
    for q in queries[:3]:
        image = by_name[Path(q.query.image).name]
        path = Path(image.path)
        exact = query_collection(backbone, exact_collection, path, q.query.box, query_id=image.image_id)
        staged = query_project(backbone, project, load_rgb(path), q.query.box, query_id=image.image_id, candidates=4)
        assert staged[0] == exact[0]
        assert {d.image_id for d in staged} <= {d.image_id for d in exact}


def test_cli_detect_over_a_project_indexed_and_exact(tiny_project, capsys):
    store, _ = open_project(tiny_project)
    q = load_annotations(Path(tiny_project).parent / "ground_truth.json")[0]
    image = next(img.path for img in store.list_images() if Path(img.path).name == Path(q.query.image).name)
    box = ",".join(str(round(v)) for v in q.query.box.as_list())
    store.close()
    args = ["detect", image, "--box", box, "--project", str(tiny_project), "--json", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    indexed = json.loads(capsys.readouterr().out)
    assert main([*args, "--exact"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert indexed and indexed[0] == exact[0]
    assert main(["detect", image, "--box", box, "--quiet"]) == 2
    assert "--collection DIR or --project FILE" in capsys.readouterr().err


def test_large_collections_take_the_shortlist_from_the_index(monkeypatch):
    import torch
    import torch.nn.functional as F

    import hitl.discover as discover
    from engine.shortlist import ShortlistConfig

    g = torch.Generator().manual_seed(0)
    desc = F.normalize(torch.randn(12, 5, 16, generator=g), dim=2)
    desc[6:] = F.normalize(desc[:6] + 0.05 * torch.randn(6, 5, 16, generator=g), dim=2)  # i and i + 6 are twins
    ids = [f"im{i}" for i in range(12)]
    # The index stands in for the exact regional k-NN (the cell-vote shortlist needs pyramids).
    config = DiscoverConfig(k=1, shortlist=ShortlistConfig(scoring="max"))
    exact = discover._shortlist(ids, desc, config)
    monkeypatch.setattr(discover, "ANN_SHORTLIST_FROM", 10)
    indexed = discover._shortlist(ids, desc, config)
    assert sorted(indexed) == sorted(exact) == sorted((f"im{i}", f"im{i + 6}") for i in range(6))
