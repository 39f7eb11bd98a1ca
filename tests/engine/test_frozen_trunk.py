"""The frozen CPU inference copy of a backbone (engine/frozen_trunk.py, issue 12)."""

import pytest
import torch

from engine.backbone import create_backbone
from engine.frozen_trunk import fold_batchnorm, frozen_trunk


def _with_running_stats(name: str):
    """A random backbone whose BatchNorms hold non-trivial statistics and affine weights
    (fresh ones are the identity map, which any folding gets right)."""
    backbone = create_backbone(name)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.2)
    return backbone


@pytest.mark.parametrize("name", ["random-effnet-lite0", "random-resnet18"])
def test_folded_batchnorm_computes_the_same_trunk(name):
    backbone = _with_running_stats(name)
    folded = fold_batchnorm(backbone.trunk)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.trunk.modules())  # the original is untouched
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(folded(x), backbone.trunk(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["random-effnet-lite0", "random-resnet18"])
def test_frozen_float32_equals_eager_at_every_size(name):
    """Traced once at 64 x 64, the frozen copy is right at other sizes and batch sizes
    (timm's "same" pads, fixed at tracing, depend only on the parity of the sizes)."""
    backbone = _with_running_stats(name)
    frozen = frozen_trunk(backbone, torch.float32)
    for shape in ((1, 3, 64, 64), (2, 3, 48, 80), (1, 3, 160, 32)):
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = backbone(x)
        got = frozen(x.contiguous(memory_format=torch.channels_last))
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), shape


def test_frozen_bf16_keeps_named_modules_in_float32():
    """Named modules keep float32 weights (never rounded through bf16); the others are
    bf16 without their bias, which is added in float32 after them. Accuracy on real
    weights: tests/engine/test_features.py (all-bf16 fails it)."""
    from engine.frozen_trunk import ChannelBias, _Inference

    backbone = _with_running_stats("random-effnet-lite0")
    copy = _Inference(backbone, torch.bfloat16, ("trunk.0", "trunk.3.0.conv_dw"))
    params = dict(copy.named_parameters())
    assert torch.equal(params["trunk.0.weight"], fold_batchnorm(backbone.trunk)[0].weight)  # exact float32
    assert params["trunk.3.0.conv_dw.weight"].dtype == params["trunk.3.0.conv_dw.bias"].dtype == torch.float32
    assert params["trunk.3.0.conv_pw.0.weight"].dtype == torch.bfloat16
    assert isinstance(copy.trunk.get_submodule("3.0.conv_pw.1"), ChannelBias)
    assert params["trunk.3.0.conv_pw.1.bias"].dtype == torch.float32
    x = torch.rand(1, 3, 64, 64)
    half = frozen_trunk(backbone, torch.bfloat16)
    mixed = frozen_trunk(backbone, torch.bfloat16, ("trunk.0", "trunk.1", "trunk.2"))
    assert half(x).dtype == mixed(x).dtype == torch.float32  # the last folded shift is added in float32
    assert not torch.equal(half(x), mixed(x))
    with pytest.raises(AttributeError):
        frozen_trunk(backbone, torch.bfloat16, ("trunk.no_such_module",))


def test_rebuilt_when_the_weights_change_and_never_a_submodule():
    backbone = _with_running_stats("random-effnet-lite0")
    keys = set(backbone.state_dict())
    x = torch.rand(1, 3, 32, 32)
    first = frozen_trunk(backbone, torch.float32)
    assert frozen_trunk(backbone, torch.float32) is first  # built once
    before = first(x)
    with torch.no_grad():  # what an optimizer step does: an in-place update
        backbone.trunk[0].weight.mul_(2.0)
    again = frozen_trunk(backbone, torch.float32)
    assert again is not first
    with torch.no_grad():
        assert torch.allclose(again(x), backbone(x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(again(x), before, atol=1e-3)
    assert set(backbone.state_dict()) == keys  # checkpoints never carry the copy


def test_only_foldable_backbones():
    backbone = create_backbone("random-effnet-lite0")
    backbone.spec = type(backbone.spec)("other", 112, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="no frozen trunk"):
        frozen_trunk(backbone, torch.float32)


def test_features_use_it_only_in_eval_mode_on_whole_cells(random_effnet, monkeypatch):
    import engine.features as features

    monkeypatch.setenv("ARTMINER_PRECISION", "fp32")
    x = torch.rand(1, 3, 32, 48)
    assert not features._frozen_applies(random_effnet, x)  # off by default
    monkeypatch.setattr(features, "FROZEN_GRAPH", True)
    assert features._frozen_applies(random_effnet, x)
    assert not features._frozen_applies(random_effnet, torch.rand(1, 3, 40, 48))
    random_effnet.train()
    try:
        assert not features._frozen_applies(random_effnet, x)
    finally:
        random_effnet.eval()
    monkeypatch.setattr(features, "FROZEN_GRAPH", False)
    assert not features._frozen_applies(random_effnet, x)
