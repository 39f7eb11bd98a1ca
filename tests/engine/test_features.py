import numpy as np
import pytest
import torch
from PIL import Image

from engine.features import (
    FeatureCache,
    FeatureConfig,
    FeaturePyramid,
    collection_features,
    extract_pyramid,
    level_shape,
)


def test_paper_scales_two_octaves_three_per_octave():
    assert FeatureConfig().sides() == (40, 32, 25, 20, 16, 13, 10)
    assert FeatureConfig(max_side=20, n_scales=4).sides() == (20, 16, 13, 10)


def test_level_shape_keeps_aspect():
    assert level_shape((640, 480), 40) == (30, 40)
    assert level_shape((300, 900), 40) == (40, 13)


def test_pyramid_shapes_and_unit_norm(random_effnet):
    rgb = np.zeros((90, 120, 3), dtype=np.uint8)
    pyr = extract_pyramid(random_effnet, rgb, FeatureConfig(max_side=8, n_scales=3))
    assert [tuple(t.shape) for t in pyr.levels] == [(112, 6, 8), (112, 4, 6), (112, 4, 5)]
    assert pyr.image_size == (120, 90)
    norms = pyr.levels[0].norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    assert pyr.cell_size(0) == (15.0, 15.0)


def test_cache_round_trip_in_half_precision(tmp_path):
    pyr = FeaturePyramid((torch.nn.functional.normalize(torch.rand(8, 3, 4), dim=0),), (64, 48))
    cache = FeatureCache(tmp_path, "m", FeatureConfig())
    assert cache.get("ab" * 32) is None
    cache.put("ab" * 32, pyr)
    back = cache.get("ab" * 32)
    assert back.image_size == (64, 48) and back.levels[0].dtype == torch.float16
    assert torch.allclose(back.levels[0].float(), pyr.levels[0], atol=1e-3)
    # another model or config never sees these features
    assert FeatureCache(tmp_path, "m2", FeatureConfig()).get("ab" * 32) is None
    assert FeatureCache(tmp_path, "m", FeatureConfig(max_side=20)).get("ab" * 32) is None


def test_truncated_cache_file_is_recomputed_not_trusted(tmp_path):
    cache = FeatureCache(tmp_path, "m", FeatureConfig())
    path = cache.path("cd" * 32)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    assert cache.get("cd" * 32) is None


def test_collection_skips_bad_files_by_name_and_caches(tmp_path, random_effnet, image_folder, monkeypatch):
    (image_folder / "zz_broken.jpg").write_bytes(b"garbage")
    items = [(p.name, p) for p in sorted(image_folder.iterdir())]
    config = FeatureConfig(max_side=8, n_scales=2)
    first = collection_features(random_effnet, items, config, tmp_path / "cache", progress=False)
    assert len(first.pyramids) == 6 and first.image_ids[0] == "img0.jpg"
    assert [f.path for f in first.failures] == [str(image_folder / "zz_broken.jpg")]

    import engine.features as features

    def no_compute(*a, **k):
        raise AssertionError("a warm cache recomputes nothing")

    monkeypatch.setattr(features, "extract_pyramids", no_compute)
    second = collection_features(random_effnet, items[:-1], config, tmp_path / "cache", progress=False)
    assert torch.allclose(second.pyramids[3].levels[1].float(), first.pyramids[3].levels[1], atol=1e-3)


def test_exif_rotated_image_gets_upright_shapes(tmp_path, random_effnet):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (160, 80)).save(tmp_path / "r.jpg", exif=exif)
    feats = collection_features(random_effnet, [("r", tmp_path / "r.jpg")], FeatureConfig(max_side=8, n_scales=1), None, progress=False)
    assert feats.pyramids[0].image_size == (80, 160)
    assert tuple(feats.pyramids[0].levels[0].shape[1:]) == (8, 4)


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "RGBA", "P"])
def test_every_image_mode_gives_features(tmp_path, random_effnet, mode):
    arr = (np.arange(64 * 48) % 200).astype(np.uint16 if mode == "I;16" else np.uint8).reshape(48, 64)
    img = Image.fromarray(arr) if mode in ("L", "I;16") else Image.fromarray(arr).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    feats = collection_features(random_effnet, [("x", path)], FeatureConfig(max_side=4, n_scales=1), None, progress=False)
    assert not feats.failures and feats.pyramids[0].levels[0].shape == (112, 3, 4)
