"""benchmarks.detect's synthetic banks: mixes and collages of real pyramids."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.detect import COLLAGE_GRID, SyntheticBank, agreement
from engine.ann_index import AnnConfig
from engine.features import FeaturePyramid
from engine.types import Box, Detection


def _real(n: int = 4) -> list[FeaturePyramid]:
    g = torch.Generator().manual_seed(0)
    shapes = [((9, 12), (6, 8)), ((12, 9), (8, 6))]  # two image shapes, two levels each
    return [FeaturePyramid(tuple(F.normalize(torch.randn(8, h, w, generator=g), dim=0) for h, w in shapes[i % 2]),
                           (192, 144) if i % 2 == 0 else (144, 192)) for i in range(n)]


def test_a_collage_is_tiles_of_real_images_of_its_shape_and_no_two_are_alike():
    real = _real()
    bank = SyntheticBank(real, 40, "collage")
    assert bank(1) is bank.real[1]  # real images first
    collages = [bank(i) for i in range(4, 40)]
    for c in collages:
        donors = [p for p in bank.real if p.image_size == c.image_size]
        assert [t.shape for t in c.levels] == [t.shape for t in donors[0].levels]
        level = c.levels[0]
        rows = [level.shape[1] * g // COLLAGE_GRID for g in range(COLLAGE_GRID + 1)]
        cols = [level.shape[2] * g // COLLAGE_GRID for g in range(COLLAGE_GRID + 1)]
        for gy in range(COLLAGE_GRID):
            for gx in range(COLLAGE_GRID):
                tile = level[:, rows[gy] : rows[gy + 1], cols[gx] : cols[gx + 1]]
                th, tw = tile.shape[1:]
                found = any(torch.equal(tile, d.levels[0][:, y : y + th, x : x + tw])
                            for d in donors for y in range(d.levels[0].shape[1] - th + 1)
                            for x in range(d.levels[0].shape[2] - tw + 1))
                assert found  # every tile is a real image's cells, copied as they are
    assert torch.equal(bank(7).levels[1], SyntheticBank(real, 40, "collage")(7).levels[1])  # deterministic
    flat = [c.levels[0].flatten() for c in collages if c.levels[0].shape == collages[0].levels[0].shape]
    assert all(not torch.equal(a, b) for i, a in enumerate(flat) for b in flat[i + 1 :])
    assert bank.regions(5).shape[1] == AnnConfig().blocks ** 2 * 8 and bank.pooled  # pooled from the collage's cells


def test_mixes_stay_the_default_and_a_wrong_kind_is_refused():
    bank = SyntheticBank(_real(), 10)
    assert bank.kind == "mix" and not bank.pooled
    assert torch.allclose(bank(6).levels[0].norm(dim=0), torch.ones(1))
    with pytest.raises(ValueError, match="collage"):
        SyntheticBank(_real(), 10, "noise")


def _hits(*scored: tuple[str, float]) -> list[Detection]:
    return [Detection(image, Box(0, 0, 10, 10), score) for image, score in scored]


def test_agreement_counts_images_that_tie_with_the_exact_tenth():
    # exact: a, b, then ten images tied at 0.5 of which the scan happened to list c0..c7
    exact = _hits(("a", 0.9), ("b", 0.8), *[(f"c{k}", 0.5) for k in range(10)])
    tied_others = _hits(("a", 0.9), ("b", 0.8), *[(f"c{k}", 0.5) for k in range(2, 10)], ("c0x", 0.5), ("d", 0.49))
    a = agreement([exact], [tied_others])
    assert a.recall == pytest.approx(0.8) and a.recall_ties == pytest.approx(1.0)
    assert a.top1 == 1.0 and a.top1_ties == 1.0 and a.tied == 10

    worse = _hits(("b", 0.8), ("d", 0.49), ("e", 0.3))  # missed a, found nothing as good as the 10th
    a = agreement([exact], [worse])
    assert a.recall == pytest.approx(0.1) and a.recall_ties == pytest.approx(0.1)
    assert a.top1 == 0.0 and a.top1_ties == 0.0


def test_the_benchmark_runs_end_to_end_and_prints_recall_with_ties(tmp_path, capsys):
    from PIL import Image

    from benchmarks.detect import main

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    motif = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for k in range(6):  # noisy pages, a shared motif pasted at different places
        page = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        page[20 + 20 * k : 68 + 20 * k, 30 + 30 * k : 94 + 30 * k] = motif
        Image.fromarray(page).save(folder / f"p{k}.jpg")
    main(["--device", "cpu", "--images", str(folder), "--bank-size", "12", "--queries", "2",
          "--feature-images", "2", "--candidates", "4", "--synthetic", "collage", "--flat", "--stride", "4"])
    out = capsys.readouterr().out
    assert "cache file reads" in out and "through np.load" in out
    assert out.count("indexed vs exact") == 2  # the default index and the flat one
    assert "counting ties with the exact 10th" in out and "flat (--flat)" in out
