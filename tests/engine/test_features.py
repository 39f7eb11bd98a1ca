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
    read_stored_npz,
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


def test_npz_reader_returns_what_numpy_reads_as_writable_arrays(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"level0": rng.random((3, 4, 5)).astype(np.float16), "n_levels": np.array(1),
              "image_size": np.array([64, 48]), "fortran": np.asfortranarray(rng.random((4, 3)))}
    for save in (np.savez, np.savez_compressed):  # compressed members: numpy inflates them
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        back = read_stored_npz(path)
        assert set(back) == set(arrays)
        for name, array in arrays.items():
            assert back[name].dtype == array.dtype and np.array_equal(back[name], array)
            assert back[name].flags.writeable  # torch.from_numpy takes it as is
    assert back["fortran"].flags.f_contiguous


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1])
def test_cache_file_cut_anywhere_is_recomputed_not_trusted(tmp_path, keep):
    cache = FeatureCache(tmp_path, "m", FeatureConfig())
    levels = (torch.nn.functional.normalize(torch.rand(8, 6, 8), dim=0), torch.rand(8, 3, 4))
    cache.put("ef" * 32, FeaturePyramid(levels, (128, 96)))
    path = cache.path("ef" * 32)
    whole = path.read_bytes()
    assert cache.get("ef" * 32) is not None
    path.write_bytes(whole[: int(len(whole) * keep) if keep > 0 else keep])
    assert cache.get("ef" * 32) is None


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


# ---------------------------------------------------------------- CPU speed path (issue 12)


def _astronaut(width: int = 320, height: int = 240) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BILINEAR))


def test_bf16_features_agree_with_fp32_per_cell(effnet, monkeypatch):
    """bfloat16 autocast (ARTMINER_PRECISION=bf16; the stem, the first block and the first
    stride-4 depthwise convolution kept in float32) barely moves the features: every cell's
    cosine to float32 is >= 0.995 at every level (measured here: worst 0.997-0.999; all
    bf16: worst 0.988)."""
    import engine.features as features
    from engine.features import FLOAT32_MODULES

    config = FeatureConfig(max_side=20, n_scales=3)
    rgb = _astronaut()
    monkeypatch.setattr(features, "ONNX_RUNTIME", False)  # the reference: PyTorch's float32 forward
    monkeypatch.setenv("ARTMINER_PRECISION", "fp32")
    full = extract_pyramid(effnet, rgb, config)
    monkeypatch.setenv("ARTMINER_PRECISION", "bf16")
    half = extract_pyramid(effnet, rgb, config)
    cosines = []
    for a, b in zip(full.levels, half.levels):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        cosines.append((a * b).sum(dim=0).flatten())
    cosine = torch.cat(cosines)
    low = {q: float(cosine.quantile(q)) for q in (0.001, 0.01, 0.5)}
    assert cosine.min() >= 0.995, f"worst cell cosine {cosine.min():.4f}, percentiles {low}"
    assert cosine.min() < 1.0  # the second run really took the bf16 path
    assert torch.is_autocast_enabled("cpu") is False  # the float32 modules' hooks left autocast as it was
    names = dict(effnet.named_modules())
    assert all(name in names for name in FLOAT32_MODULES["effnet-lite0"])  # they name real modules


def test_channels_last_forward_equals_plain_forward(monkeypatch):
    """Channels-last is a layout change only: float32 features equal the plain NCHW forward."""
    import engine.features as features
    from engine.backbone import create_backbone
    from engine.features import embed_cells, resize_to_cells

    monkeypatch.setenv("ARTMINER_PRECISION", "fp32")
    monkeypatch.setattr(features, "ONNX_RUNTIME", False)  # PyTorch's own forward
    plain, fast = create_backbone("random-effnet-lite0"), create_backbone("random-effnet-lite0")
    image = torch.from_numpy(_astronaut(96, 64).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = torch.nn.functional.normalize(plain(resize_to_cells(image, (3, 5))), dim=1)
    got = embed_cells(fast, image, (3, 5))
    assert got.shape == (1, 112, 3, 5)
    assert torch.allclose(got, expected, atol=1e-4)


def test_precision_choice(monkeypatch):
    import engine.features as features
    from engine.features import FeatureConfig, autocast_dtype, cpu_has_native_bf16, cpu_precision
    from engine.onnx_trunk import onnx_runtime_available

    assert isinstance(cpu_has_native_bf16(), bool)
    backbone = type("B", (), {"spec": type("S", (), {"arch": "x"})()})()
    assert autocast_dtype(backbone, torch.device("cuda")) == torch.float16
    monkeypatch.setenv("ARTMINER_PRECISION", "fp32")
    assert cpu_precision() == "fp32" and autocast_dtype(backbone, torch.device("cpu")) is None
    fp32_key = FeatureConfig().key()
    monkeypatch.setenv("ARTMINER_PRECISION", "bf16")
    assert cpu_precision() == "bf16" and autocast_dtype(backbone, torch.device("cpu")) == torch.bfloat16
    assert FeatureConfig().key() != fp32_key  # caches of the two precisions never mix
    # Unforced, the machine decides, the same way in every process (no timing): float32 in
    # ONNX Runtime where it is installed, else bf16 where the CPU has it natively.
    monkeypatch.delenv("ARTMINER_PRECISION")
    assert cpu_precision() == ("fp32" if onnx_runtime_available() or not cpu_has_native_bf16() else "bf16")
    monkeypatch.setattr(features, "ONNX_RUNTIME", False)
    assert cpu_precision() == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert {cpu_precision() for _ in range(5)} == {cpu_precision()}


def test_each_image_is_resized_once_per_level(random_effnet, monkeypatch):
    import engine.features as features

    calls = []
    interpolate = torch.nn.functional.interpolate

    def counting(*args, **kwargs):
        calls.append(kwargs.get("size"))
        return interpolate(*args, **kwargs)

    monkeypatch.setattr(features.F, "interpolate", counting)
    rgbs = [np.zeros((90, 120, 3), np.uint8), np.zeros((120, 90, 3), np.uint8)]
    pyramids = list(features.extract_pyramids(random_effnet, rgbs, FeatureConfig(max_side=8, n_scales=3), [(120, 90), (90, 120)]))
    assert len(pyramids) == 2 and len(calls) == 2 * 3


def test_reference_level_never_upsampled_when_asked():
    config = FeatureConfig(upsample=False)
    # 320 px long side = 20 cells of 16 px: level 0 stays at the image's own size, the
    # others follow two octaves down from there.
    assert config.image_sides((320, 240)) == pytest.approx([20 * 2 ** (-k / 3) for k in range(7)])
    assert [level_shape((320, 240), s) for s in config.image_sides((320, 240))][:2] == [(15, 20), (12, 16)]
    assert config.image_sides((1280, 960)) == FeatureConfig().image_sides((1280, 960))  # large images: the paper's 40
    assert FeatureConfig().image_sides((320, 240))[0] == 40  # the paper's rule upsamples
    # the other rule gets its own cache key; a change of numerics gives every config a new one
    assert config.key() != FeatureConfig().key()
    assert FeatureConfig().key() != "f27ebfb7ff"  # the key before NUMERICS_VERSION 2
    assert FeatureConfig().key() == FeatureConfig().key()


def test_small_image_pyramid_without_upsampling(random_effnet):
    rgb = np.zeros((48, 64, 3), dtype=np.uint8)
    pyr = extract_pyramid(random_effnet, rgb, FeatureConfig(max_side=8, n_scales=3, upsample=False))
    assert [tuple(t.shape[1:]) for t in pyr.levels] == [(3, 4), (2, 3), (2, 3)]
    assert pyr.cell_size(0) == (16.0, 16.0)
