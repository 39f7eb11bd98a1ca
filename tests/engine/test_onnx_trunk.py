"""CPU features through ONNX Runtime (engine/onnx_trunk.py, issue 12): float32, PyTorch's numbers."""

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import engine.features as features
import engine.onnx_trunk as onnx_trunk
from engine.backbone import create_backbone
from engine.features import FeatureConfig, embed_pixels, extract_pyramid
from engine.onnx_trunk import (
    onnx_applies,
    onnx_forward,
    onnx_session,
    static_same_padding,
)
from engine.trunk_cache import TrunkByProduct, TrunkCache, prefix_beside_features, prefix_forward


def _photo(width: int = 320, height: int = 240) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BILINEAR))


def _torch_pyramid(backbone, rgb, config, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(features, "ONNX_RUNTIME", False)
        m.setenv("ARTMINER_PRECISION", "fp32")
        return extract_pyramid(backbone, rgb, config)


def test_static_pads_equal_tensorflow_same_padding_on_whole_cells():
    backbone = create_backbone("random-effnet-lite0").eval()
    static = static_same_padding(backbone.trunk)
    replaced = [name for name, m in backbone.trunk.named_modules() if type(m).__name__ == "Conv2dSame"]
    assert replaced and not any(type(m).__name__ == "Conv2dSame" for m in static.modules())
    with torch.no_grad():
        for h, w in ((16, 16), (48, 80), (64, 32)):
            x = torch.randn(2, 3, h, w)
            assert torch.allclose(static(x), backbone.trunk(x), atol=1e-5)


def test_onnx_features_equal_pytorch_float32_at_every_level(effnet, monkeypatch):
    """The default CPU path: every cell's cosine to PyTorch's float32 features >= 0.9999."""
    monkeypatch.delenv("ARTMINER_PRECISION", raising=False)
    assert features.cpu_precision() == "fp32" and features.onnx_serves(effnet)
    config = FeatureConfig(max_side=20, n_scales=3)
    rgb = _photo()
    fast = extract_pyramid(effnet, rgb, config)
    assert effnet in onnx_trunk._SESSIONS  # the session was really built and used
    exact = _torch_pyramid(effnet, rgb, config, monkeypatch)
    for a, b in zip(fast.levels, exact.levels):
        assert a.shape == b.shape and a.dtype == torch.float32
        assert torch.allclose(a.norm(dim=0), torch.ones(a.shape[1:]), atol=1e-5)
        assert (a * b).sum(dim=0).min() >= 0.9999


@pytest.mark.parametrize("arch", ["random-effnet-lite0", "random-resnet18"])
def test_every_backbone_exports_with_its_prefix(arch):
    """Both backbones export; "both" is the prefix's output then the features, each equal to PyTorch's."""
    backbone = create_backbone(arch).eval()
    pixels = torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = backbone(pixels)
        features._channels_last(backbone)  # as PyTorch's CPU path leaves it
        prefix = backbone.trunk[:-1]((pixels - backbone.mean) / backbone.std)
    assert torch.allclose(onnx_forward(backbone, pixels), expected, atol=1e-4)
    assert torch.allclose(onnx_forward(backbone, pixels, "prefix"), prefix, atol=1e-4)
    with pytest.raises(ValueError, match="outputs"):
        onnx_forward(backbone, pixels, "logits")
    if not prefix_beside_features(backbone):  # ResNet-18: layer3 halves its input, no shared output
        assert arch == "random-resnet18" and prefix.shape[-1] == 2 * expected.shape[-1]
        return
    both = onnx_forward(backbone, pixels, "both")
    assert both.shape == (2, prefix.shape[1] + backbone.channels, 3, 5)
    assert torch.equal(both[:, prefix.shape[1] :], onnx_forward(backbone, pixels))
    assert torch.equal(onnx_forward(backbone, pixels, "prefix"), both[:, : prefix.shape[1]])


def test_session_follows_the_weights_and_threads(monkeypatch):
    backbone = create_backbone("random-effnet-lite0").eval()
    pixels = torch.rand(1, 3, 64, 96)
    first = onnx_session(backbone)
    assert onnx_session(backbone) is first  # built once
    with torch.no_grad():
        backbone.trunk[-1][0].conv_pw.weight.mul_(1.5)  # a training step changes weights in place
    second = onnx_session(backbone)
    assert second is not first
    with torch.no_grad():
        expected = backbone(pixels)
    assert torch.allclose(onnx_forward(backbone, pixels), expected, atol=1e-4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert onnx_session(backbone) is not second  # a Ray actor's one thread gets its own session
    finally:
        torch.set_num_threads(threads)


def test_features_do_not_depend_on_which_path_ran_first(effnet):
    """PyTorch's CPU path hooks modules (bf16's float32 modules) and makes the weights
    channels-last; a session built after that computes the same bits as one built before."""
    backbone = copy.deepcopy(effnet)
    pixels = torch.rand(5, 3, 256, 192, generator=torch.Generator().manual_seed(0))
    before = onnx_forward(backbone, pixels)
    features._channels_last(backbone)
    features._float32_modules(backbone)
    onnx_trunk._SESSIONS.clear()
    assert torch.equal(onnx_forward(backbone, pixels), before)


def test_training_mode_stays_in_pytorch():
    backbone = create_backbone("random-effnet-lite0")
    assert onnx_applies(backbone.eval())
    assert not onnx_applies(backbone.train())


def test_failed_export_falls_back_to_pytorch_float32_with_a_warning(monkeypatch, caplog):
    backbone = create_backbone("random-effnet-lite0").eval()

    def cannot_export(*args):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(onnx_trunk, "_build", cannot_export)
    monkeypatch.delenv("ARTMINER_PRECISION", raising=False)
    pixels = torch.rand(1, 3, 32, 48)
    with caplog.at_level(logging.WARNING, logger="engine.onnx_trunk"):
        got = embed_pixels(backbone, pixels)
    assert "ONNX export" in caplog.text and "failed" in caplog.text
    with torch.no_grad():
        expected = F.normalize(backbone(pixels), dim=1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not onnx_applies(backbone)  # asked once, not at every image


def test_by_product_from_one_onnx_pass_equals_pytorch(tmp_path, monkeypatch):
    """Discovery's feature pass also keeps the trunk cache: ONNX Runtime gives the last stage's
    input and the features from one pass, equal to PyTorch's two steps."""
    monkeypatch.delenv("ARTMINER_PRECISION", raising=False)
    backbone = create_backbone("random-effnet-lite0").eval()
    config = FeatureConfig(max_side=12, n_scales=2)
    rgb = _photo(160, 120)
    sizes = [(160, 120)]
    fast = next(TrunkByProduct(tmp_path / "a", backbone, config)(backbone, [rgb], config, sizes, ["h1"]))
    with monkeypatch.context() as m:
        m.setattr(features, "ONNX_RUNTIME", False)
        m.setenv("ARTMINER_PRECISION", "fp32")
        exact = next(TrunkByProduct(tmp_path / "b", backbone, config)(backbone, [rgb], config, sizes, ["h1"]))
    for a, b in zip(fast.levels, exact.levels):
        assert a.shape == b.shape and (a * b).sum(dim=0).min() >= 0.9999
    plain = extract_pyramid(backbone, rgb, config)  # a feature pass without the by-product: the same bits
    assert all(torch.equal(a, b) for a, b in zip(fast.levels, plain.levels))
    cached_fast = TrunkCache(tmp_path / "a", backbone, config).get("h1")
    cached_exact = TrunkCache(tmp_path / "b", backbone, config).get("h1")
    for a, b in zip(cached_fast.levels, cached_exact.levels):
        assert a.shape == b.shape and a.dtype == torch.float16
        assert torch.allclose(a.float(), b.float(), atol=2e-2, rtol=1e-2)
    monkeypatch.setattr(features, "ONNX_RUNTIME", False)
    with torch.no_grad():  # and the cached part is the prefix's output (PyTorch's)
        pixels = features.resize_to_cells(features.rgb_to_tensor(rgb), tuple(exact.levels[0].shape[1:]))
        assert torch.allclose(cached_fast.levels[0].float(), prefix_forward(backbone, pixels)[0], atol=2e-2, rtol=1e-2)


def test_inputs_must_be_whole_cells():
    """The constant pads are exact only for whole cells: other shapes are refused, not padded wrongly."""
    backbone = create_backbone("random-effnet-lite0").eval()
    with pytest.raises(ValueError, match="multiples of 16"):
        onnx_forward(backbone, torch.rand(1, 3, 30, 48))


def test_by_product_of_a_backbone_whose_last_stage_strides(tmp_path, caplog):
    """ResNet-18's prefix and features have different strides: the by-product takes PyTorch's
    two steps, with no export attempted (nor warned about), and features still run in ONNX."""
    backbone = create_backbone("random-resnet18").eval()
    config = FeatureConfig(max_side=8, n_scales=2)
    rgb = _photo(128, 96)
    with caplog.at_level(logging.WARNING, logger="engine.onnx_trunk"):
        got = next(TrunkByProduct(tmp_path, backbone, config)(backbone, [rgb], config, [(128, 96)], ["h"]))
    assert caplog.text == "" and "both" not in onnx_trunk._SESSIONS.get(backbone, {})
    plain = extract_pyramid(backbone, rgb, config)
    for a, b in zip(got.levels, plain.levels):
        assert a.shape == b.shape and (a * b).sum(dim=0).min() >= 0.9999
    assert TrunkCache(tmp_path, backbone, config).get("h") is not None
