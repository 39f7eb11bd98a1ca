"""Executors (issue 12): Parquet shards, the local default, and the Ray backend in local mode."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import pytest

from db.store import Store
from engine.features import FeatureConfig
from engine.types import Box, PairMatch
from hitl.discover import DiscoverConfig, run_discovery
from hitl.executors import LocalExecutor, make_executor
from hitl.executors.shards import load_shards, plan_shards, read_shard, shard_folder, write_shard
from hitl.project import open_project

# Small pyramids, every pair, no masks or style map: the stages an executor runs, fast.
# Mirror "image" so the workers extract the flipped images' features too.
CONFIG = DiscoverConfig(pairs="all", features=FeatureConfig(max_side=16, n_scales=3), commit_every=4,
                        min_score=0.0, masks="off", mirror="image", style=False)

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'artminer-hitl[ray]')")


def _match(a: str, b: str, score: float, mirrored: bool = False) -> PairMatch:
    return PairMatch(a, b, Box(1.5, 2.0, 30.25, 40.0), Box(0.0, 0.5, 12.0, 9.75),
                     ((1.0, 0.1, 3.0), (-0.2, 0.9, 4.5)), score, 17, mirrored)


def _link_keys(store: Store) -> list[tuple]:
    """Every stored link as comparable values (duplicates stay visible)."""
    return sorted((m.image_a, m.image_b, m.box_a.as_list(), m.box_b.as_list(), m.affine, m.score, m.n_inliers,
                   m.mirrored) for m in (lk.match for lk in store.list_links()))


# ---------------------------------------------------------------- shards (no Ray needed)


def test_shard_plan_is_deterministic_and_keyed_by_its_pairs():
    pairs = [("c", "d"), ("a", "b"), ("a", "c"), ("b", "d"), ("a", "d")]
    shards = plan_shards(7, pairs, 2)
    assert [s.pairs for s in shards] == [(("a", "b"), ("a", "c")), (("a", "d"), ("b", "d")), (("c", "d"),)]
    assert plan_shards(7, list(reversed(pairs)), 2) == shards  # order in, same shards out
    assert [s.name[:9] for s in shards] == ["r7-00000-", "r7-00001-", "r7-00002-"]
    other = plan_shards(7, pairs[:4], 2)  # the last shard's pairs differ: so does its name
    assert other[0] == shards[0] and other[1].name != shards[1].name
    with pytest.raises(ValueError, match="shard size"):
        plan_shards(7, pairs, 0)


def test_shard_round_trip_keeps_matches_and_pairs_without_links(tmp_path):
    links = [_match("a", "b", 0.125), _match("a", "c", 0.0625, mirrored=True)]
    pairs = [("a", "b"), ("a", "c"), ("a", "d")]  # ("a", "d"): verified, no link
    path = tmp_path / "s.parquet"
    write_shard(path, pairs, links)
    assert read_shard(path) == (pairs, links)
    write_shard(path, [("x", "y")], [])
    assert read_shard(path) == ([("x", "y")], [])
    assert not list(tmp_path.glob("*.tmp"))  # written under a temporary name, then renamed


def test_loading_shards_is_one_transaction_and_never_doubles(tiny_project):
    from hitl.project import active_model_id

    store, paths = open_project(tiny_project)
    a, b, c = sorted(im.image_id for im in store.list_images())[:3]
    model_id = active_model_id(store)
    run_id = store.start_run(model_id, {"test": True})
    folder = shard_folder(paths.data_dir, run_id)
    shards = plan_shards(run_id, [(a, b), (a, c), (b, c)], 2)

    def write_both() -> None:
        write_shard(shards[0].path(folder), shards[0].pairs, [_match(a, b, 0.5)])
        write_shard(shards[1].path(folder), shards[1].pairs, [_match(b, c, 0.25)])

    write_both()
    assert load_shards(store, run_id, shards, folder) == 2
    assert not folder.exists()  # loaded shards are removed
    assert store.verified_pairs(model_id) == {(a, b), (a, c), (b, c)}
    write_both()  # the same shards again (a driver killed after the commit, before removing them)
    assert load_shards(store, run_id, shards, folder) == 0
    assert len(store.list_links()) == 2


def test_unknown_executor_is_refused():
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(ValueError, match="executor must be one of local, ray"):
        make_executor("dask")


# ---------------------------------------------------------------- Ray in local mode


@pytest.fixture(scope="module")
def ray_local():
    """Ray started once for the module, before any project file is open: a GCS server
    spawned while DuckDB holds a file open in the driver dies at start (Ray 2.60)."""
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install 'artminer-hitl[ray]')")
    import ray

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=temp)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_links(tiny_demo, tmp_path_factory) -> tuple[Path, list[tuple]]:
    """A fresh tiny project (not discovered yet), and the links discovery in process stores on a copy."""
    from hitl.ingest import ingest_paths

    root = tmp_path_factory.mktemp("exec") / "proj"
    shutil.copytree(tiny_demo, root)
    with Store(root / "artminer.duckdb") as store:
        ingest_paths(store, [root / "images"], metadata_csv=root / "metadata.csv", progress=False)
    local = root.parent / "local"
    shutil.copytree(root, local)
    store, paths = open_project(local / "artminer.duckdb")
    run_discovery(store, paths, CONFIG, progress=False)
    return root, _link_keys(store)


def test_local_executor_stores_what_discovery_in_process_stores(local_links, tmp_path):
    root, expected = local_links
    store, paths = _fresh(root, tmp_path)
    run_discovery(store, paths, CONFIG, progress=False, executor=LocalExecutor())
    assert expected and _link_keys(store) == expected


def _fresh(root: Path, tmp_path: Path) -> tuple[Store, object]:
    shutil.copytree(root, tmp_path / "p")
    return open_project(tmp_path / "p" / "artminer.duckdb")


@needs_ray
def test_ray_stores_exactly_the_local_links(ray_local, local_links, tmp_path):
    from hitl.executors.ray_executor import RayConfig, RayExecutor

    root, expected = local_links
    store, paths = _fresh(root, tmp_path)
    executor = RayExecutor(RayConfig(workers=1))
    report = run_discovery(store, paths, CONFIG, progress=False, executor=executor)
    assert report.n_verified_now == 28 and executor.stats.planned == executor.stats.written == 7  # 28 pairs / 4
    assert expected and _link_keys(store) == expected
    assert not shard_folder(paths.data_dir, report.run_id).exists()


@needs_ray
def test_ray_job_killed_midway_reruns_without_duplicates(ray_local, local_links, tmp_path):
    from hitl.executors.ray_executor import RayConfig, RayExecutor

    root, expected = local_links
    store, paths = _fresh(root, tmp_path)
    dying = RayExecutor(RayConfig(workers=1, fail_after_shards=3))
    with pytest.raises(Exception, match="fault injection"):
        run_discovery(store, paths, CONFIG, progress=False, executor=dying)
    (failed,) = store.list_runs()
    assert failed.status == "failed" and store.list_links() == []  # workers never write the store
    assert len(list(shard_folder(paths.data_dir, failed.run_id).glob("*.parquet"))) == 3

    rerun = RayExecutor(RayConfig(workers=1))
    report = run_discovery(store, paths, CONFIG, progress=False, executor=rerun)
    assert report.run_id == failed.run_id and store.get_run(failed.run_id).status == "done"
    assert (rerun.stats.planned, rerun.stats.skipped, rerun.stats.written) == (7, 3, 4)
    assert _link_keys(store) == expected  # every link once
    again = run_discovery(store, paths, CONFIG, progress=False, executor=RayExecutor(RayConfig(workers=1)))
    assert again.n_verified_now == 0 and _link_keys(store) == expected


@needs_ray
def test_ray_config_refuses_unknown_device():
    from hitl.executors.ray_executor import RayConfig, RayExecutor

    with pytest.raises(ValueError, match="cpu or cuda"):
        RayExecutor(RayConfig(device="tpu"))


@needs_ray
def test_ray_actors_run_as_many_torch_threads_as_cpus_they_reserve(tmp_path):
    # A driver started with OMP_NUM_THREADS=2 once gave each one-CPU actor two threads:
    # two actors on two cores then verified 4x slower than one local process.
    import torch

    from engine.features import FeatureCache
    from hitl.executors.ray_executor import ACTOR_CPUS, VerifyWorker
    from hitl.executors.work import VerifySetup

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        VerifyWorker(VerifySetup(FeatureCache(tmp_path, "m", CONFIG.features), CONFIG, {}), str(tmp_path))
        assert torch.get_num_threads() == ACTOR_CPUS == 1
    finally:
        torch.set_num_threads(before)
