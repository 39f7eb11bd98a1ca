"""The demo collection: deterministic bytes, consistent ground truth in both formats."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hitl.demo import (
    COPIES_FILE,
    MEDIUM_LABELS,
    MOTIFS,
    DemoConfig,
    _alpha_box,
    _patch,
    _warp,
    build_demo,
    load_copies,
    plan_demo,
    render_image,
    render_page,
    render_truth,
)

SMALL = {"n_images": 12, "n_motifs": 3, "progress": False}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"), seed=3, **SMALL)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes(demo, tmp_path):
    again = build_demo(tmp_path / "again", seed=3, **SMALL)
    assert _digest(again.root) == _digest(demo.root)
    other = build_demo(tmp_path / "other", seed=4, **SMALL)
    assert _digest(other.root) != _digest(demo.root)


def test_ground_truth_is_artminer_format(demo):
    gt = json.loads(demo.ground_truth.read_text())
    assert sorted(gt) == sorted(m.name for m in MOTIFS[:3])
    sizes = {f: Image.open(demo.images_dir / f).size for f in demo.files}
    for cls, entries in gt.items():
        assert len(entries) >= 2, cls
        members = [tuple(e["query"][1]) for e in entries]
        for entry in entries:
            q_file, q_box = entry["query"]
            assert len(entry["gt"]) == len(entries) - 1
            assert [q_file, q_box] not in entry["gt"]
            for file, box in [entry["query"], *entry["gt"]]:
                assert file in sizes, f"{file} is not an image of the demo"
                x0, y0, x1, y1 = box
                assert all(isinstance(v, int) for v in box)
                w, h = sizes[file]
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (cls, file, box)
                # Copies span roughly 20-60% of the image's longer side.
                assert 0.1 * max(w, h) <= max(x1 - x0, y1 - y0) <= 0.7 * max(w, h)
        assert len(set(members)) == len(members)
    assert sum(len(v) for v in gt.values()) == len(demo.instances)


def test_no_image_holds_the_same_motif_twice_and_every_image_exists(demo):
    pairs = [(i.file, i.motif) for i in demo.instances]
    assert len(pairs) == len(set(pairs))
    assert sorted(p.name for p in demo.images_dir.iterdir()) == sorted(demo.files)
    assert any(f.endswith(".png") for f in demo.files) and any(
        f.endswith(".jpg") for f in demo.files
    )


def test_via_project_has_the_same_boxes(demo):
    via = json.loads(demo.ground_truth_via.read_text())
    assert len(via) == len(demo.files)
    boxes = set()
    for key, entry in via.items():
        assert set(entry) == {"filename", "size", "regions", "file_attributes"}
        path = demo.images_dir / entry["filename"]
        assert entry["size"] == path.stat().st_size
        assert key == f"{entry['filename']}{entry['size']}"
        for region in entry["regions"]:
            shape = region["shape_attributes"]
            assert shape["name"] == "rect" and shape["width"] > 0 and shape["height"] > 0
            box = (
                shape["x"],
                shape["y"],
                shape["x"] + shape["width"],
                shape["y"] + shape["height"],
            )
            boxes.add((entry["filename"], region["region_attributes"]["motif"], box))
    assert boxes == {(i.file, i.motif, i.box) for i in demo.instances}


def test_metadata_covers_every_image(demo):
    with open(demo.metadata, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "title", "artist", "date", "medium", "collection"]
    assert [r["file"] for r in rows] == list(demo.files)
    for r in rows:
        year = re.fullmatch(r"(c\. )?(\d{4})", r["date"])
        assert year and 1550 <= int(year.group(2)) <= 1700, r["date"]
        assert r["medium"] in MEDIUM_LABELS.values()
        assert r["title"] and r["artist"] and r["collection"]


@pytest.mark.parametrize("n_images", range(3, 15))
def test_plans_stay_consistent_for_small_collections(n_images):
    n_motifs = min(3, n_images)
    plans = plan_demo(0, n_images, n_motifs, DemoConfig())
    counts: dict[str, int] = {}
    for p in plans:
        assert len(p.motifs) <= 2 and len(set(p.motifs)) == len(p.motifs)
        for m in p.motifs:
            counts[m] = counts.get(m, 0) + 1
    assert len(counts) == n_motifs and min(counts.values()) >= 2


def test_box_frames_the_pasted_copy():
    """Without medium, deformation or occlusion, the box crop is the source patch again."""
    config = DemoConfig(
        max_rotation_deg=0,
        max_shear=0,
        flip_prob=0,
        occlusion_prob=0,
        medium_strength=0,
        scale_jitter=(1, 1),
    )
    plan = next(p for p in plan_demo(0, 6, 3, config) if p.motifs)
    image, instances = render_image(plan, 0, config)
    for inst in instances:
        source = next(m for m in MOTIFS if m.name == inst.motif)
        rgb, alpha = _patch(source)
        x0, y0, x1, y1 = _alpha_box(alpha, (0, 0))  # the box frames the copy's visible half
        rgb, alpha = rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1]
        inner = alpha > 0.99  # the feathered rim mixes with the background
        crop = image.crop(inst.box).resize(alpha.shape[::-1], Image.Resampling.BILINEAR)
        got = np.asarray(crop, np.float32).mean(axis=2)[inner]
        want = rgb.mean(axis=2)[inner]
        assert np.corrcoef(got, want)[0, 1] > 0.85, inst  # a box 6 px off scores < 0.75


def test_warp_scales_and_mirrors():
    config = DemoConfig(max_rotation_deg=0, max_shear=0)
    rng = np.random.default_rng(0)
    rgb, alpha = _warp(rng, MOTIFS[0], 200.0, config, flip=False)
    flipped_rgb, flipped_alpha = _warp(rng, MOTIFS[0], 200.0, config, flip=True)
    patch_alpha = _patch(MOTIFS[0])[1]
    px0, py0, px1, py1 = _alpha_box(patch_alpha, (0, 0))
    expected = max(px1 - px0, py1 - py0) * 200 / max(patch_alpha.shape)
    x0, y0, x1, y1 = _alpha_box(alpha, (0, 0))
    assert abs(max(x1 - x0, y1 - y0) - expected) <= 3
    inner = (alpha > 0.99) & (flipped_alpha[:, ::-1] > 0.99)
    assert np.abs(rgb[inner] - flipped_rgb[:, ::-1][inner]).mean() < 0.03
    assert np.abs(rgb[inner] - flipped_rgb[inner]).mean() > 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_images": 5, "n_motifs": 0}, "n_motifs"),
        ({"n_images": 2, "n_motifs": 3}, "too few"),
        ({"n_images": 5, "n_motifs": 2, "config": DemoConfig(media=("crayon",))}, "crayon"),
    ],
)
def test_bad_sizes_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_demo(tmp_path, progress=False, **kwargs)


def test_foreign_files_in_images_dir_are_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "my_scan.tif").write_bytes(b"x")
    with pytest.raises(ValueError, match="my_scan.tif"):
        build_demo(tmp_path, n_images=3, n_motifs=1, progress=False)
    assert (tmp_path / "images" / "my_scan.tif").exists()


# ------------------------------------------------------------------ sources


def test_one_source_plans_exactly_the_single_source_demo():
    assert plan_demo(0, 24, 4, DemoConfig(), n_sources=1) == plan_demo(0, 24, 4, DemoConfig())


def test_sources_share_the_images_and_give_each_its_house_look():
    plans = plan_demo(0, 24, 4, DemoConfig(), n_sources=4)
    single = plan_demo(0, 24, 4, DemoConfig())
    assert [p.motifs for p in plans] == [p.motifs for p in single]  # copies cross sources
    by_source = {}
    for p in plans:
        by_source.setdefault(p.source, []).append(p)
    assert len(by_source) == 4 and all(len(v) == 6 for v in by_source.values())
    for source, members in by_source.items():
        assert len({p.collection for p in members}) == 1  # the source is the collection
        if source != "museum":
            assert all(p.layout is not None and p.size == p.layout.frame_size for p in members)
    assert any(len({p.source for p in plans if m in p.motifs}) > 1 for m in {m for p in plans for m in p.motifs})


def test_pages_carry_the_picture_and_report_their_template():
    plans = plan_demo(0, 8, 2, DemoConfig(image_size=(240, 180)), n_sources=3)
    page = render_page(next(p for p in plans if p.source == "manuscript"), 0, DemoConfig(image_size=(240, 180)))
    plan = next(p for p in plans if p.source == "manuscript")
    assert page.image.size == plan.layout.page_size
    kinds = {kind for kind, _ in page.template}
    assert "script" in kinds
    fx0, fy0, fx1, fy1 = plan.layout.frame
    for inst in page.instances:  # motif copies lie inside the picture frame, in page pixels
        x0, y0, x1, y1 = inst.box
        assert fx0 <= x0 < x1 <= fx1 and fy0 <= y0 < y1 <= fy1
    for _, (x0, y0, x1, y1) in page.template:  # and never on the template
        for inst in page.instances:
            assert x1 <= inst.box[0] or inst.box[2] <= x0 or y1 <= inst.box[1] or inst.box[3] <= y0


def test_multi_source_demo_writes_templates_instances_and_collections(tmp_path):
    demo = build_demo(tmp_path, seed=2, n_images=8, n_motifs=2, config=DemoConfig(image_size=(240, 180)),
                      progress=False, n_sources=4)
    templates = json.loads(demo.template_regions.read_text())
    assert set(templates) == set(demo.files)
    instances = json.loads((tmp_path / COPIES_FILE).read_text())
    assert {i["kind"] for i in instances} == {"motif", "distractor"}
    assert sum(i["kind"] == "motif" for i in instances) == len(demo.instances)
    assert all((tmp_path / i["mask"]).is_file() for i in instances if i["kind"] == "motif")
    assert len(load_copies(tmp_path)) == len(demo.instances)  # copies only
    with open(demo.metadata, newline="", encoding="utf-8") as f:
        collections = {row["collection"] for row in csv.DictReader(f)}
    assert len(collections) == 4


def test_bad_source_count_is_refused():
    with pytest.raises(ValueError, match="n_sources"):
        plan_demo(0, 12, 2, DemoConfig(), n_sources=9)


def test_copy_transform_and_mask_are_the_pasted_geometry():
    """The recorded patch -> image affine maps the patch's opaque pixels into the copy's
    mask, mirrored copies have a negative determinant, and the mask is the visible copy."""
    config = DemoConfig(flip_prob=0.5, occlusion_prob=0)
    plans = [p for p in plan_demo(3, 8, 3, config) if p.motifs]
    seen_flip = set()
    for plan in plans[:4]:
        _, instances, masks = render_truth(plan, 3, config)
        for inst, mask in zip(instances, masks):
            affine = np.array(inst.transform).reshape(2, 3)
            assert (np.linalg.det(affine[:, :2]) < 0) == inst.flipped
            seen_flip.add(inst.flipped)
            alpha = _patch(next(m for m in MOTIFS if m.name == inst.motif))[1]
            assert alpha.shape == inst.patch_size[::-1]
            ys, xs = np.nonzero(alpha > 0.9)
            pts = np.stack([xs + 0.5, ys + 0.5, np.ones(len(xs))], 1) @ affine.T
            cols = np.clip(pts[:, 0].astype(int), 0, mask.shape[1] - 1)
            rows = np.clip(pts[:, 1].astype(int), 0, mask.shape[0] - 1)
            assert mask[rows, cols].mean() > 0.97
            x0, y0, x1, y1 = inst.box
            assert mask.any() and not mask[:, :x0].any() and not mask[:y0].any()
            assert not mask[:, x1:].any() and not mask[y1:].any()
    assert seen_flip == {True, False}


def test_copies_file_round_trips(tmp_path):
    demo = build_demo(tmp_path, seed=1, n_images=4, n_motifs=2, progress=False)
    copies = load_copies(tmp_path)
    assert [inst for inst, _ in copies] == list(demo.instances)
    for inst, mask_path in copies:
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == Image.open(demo.images_dir / inst.file).size[::-1] and mask.any()
