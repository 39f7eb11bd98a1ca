"""A CPU inference copy of a backbone: BatchNorm folded, fixed per-module dtypes, traced and frozen.

Issue 12 asks for features >= 2.5x faster than float32 on the CPU with every cell's cosine to
float32 >= 0.995. Eager PyTorch runs EfficientNet-Lite0 as ~100 small ops per forward, and a
profile of the bf16-autocast forward of a 640 x 480 image (the reference level of a demo
image) spent only ~36 % of its time in convolutions: ~22 % in BatchNorm, ~20 % in the
zero-padding of the "same"-padded stride-2 convolutions (fresh buffers, page faults),
~11 % in dtype copies, ~7 % in ReLU6. The copy built here:

1. folds every BatchNorm into the convolution before it, in float32: in eval mode a
   BatchNorm is ``y = g (x - m) / s + b`` per channel, an affine map that the conv's
   weights (times ``g / s``) and a bias (``b - m g / s``) compute exactly;
2. converts every module to ``dtype`` except the names in ``float32`` (what bf16 autocast
   did with :data:`engine.features.FLOAT32_MODULES`, now fixed in the graph), each
   module's input cast to its own weights' dtype;
3. traces it channels-last and freezes it (``torch.jit.freeze``): weights become
   constants, Python's per-op overhead goes, and the "same" pads, which only depend on
   the input's parity (every input here is a multiple of 16 pixels), become constants.

The copy is built once per backbone and rebuilt when its weights change (a training step
updates them in place: their version counters move). Training, float32 trunk caches and
CUDA never use it.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from engine.backbone import STRIDE, Backbone

# Architectures whose every BatchNorm directly follows, in data flow, the convolution
# registered just before it (timm's EfficientNet blocks, torchvision's ResNet): only
# there is folding by registration order exact. tests/engine/test_frozen_trunk.py checks
# both against the eager float32 forward.
FOLDABLE = ("effnet-lite0", "resnet18")

_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backbone -> (signature, frozen module)


def fold_batchnorm(trunk: nn.Module) -> nn.Module:
    """A copy of ``trunk`` (eval mode) with each BatchNorm folded into the conv before it.

    A timm ``BatchNormAct2d`` is replaced by its dropout and activation, a plain
    ``BatchNorm2d`` by an identity, under the same name.
    """
    from timm.layers import BatchNormAct2d

    out = copy.deepcopy(trunk).eval()
    conv: nn.Conv2d | None = None
    for name, module in list(out.named_modules()):
        if isinstance(module, nn.Conv2d):
            conv = module
            continue
        if not isinstance(module, nn.BatchNorm2d) or conv is None:
            continue
        if module.num_features != conv.out_channels or module.running_var is None:
            raise ValueError(f"{name}: BatchNorm of {module.num_features} channels after a conv of {conv.out_channels}")
        weight = module.weight if module.affine else torch.ones_like(module.running_var)
        bias = module.bias if module.affine else torch.zeros_like(module.running_mean)
        scale = weight / torch.sqrt(module.running_var + module.eps)  # (C_out,)
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            shift = bias - module.running_mean * scale
            conv.bias = nn.Parameter(shift if conv.bias is None else conv.bias * scale + shift)
        replacement = nn.Sequential(module.drop, module.act) if isinstance(module, BatchNormAct2d) else nn.Identity()
        parent, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, leaf, replacement)
        conv = None
    return out


def _cast_to_weights(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: floating inputs in the dtype of the module's own weights."""
    dtype = next(module.parameters(recurse=False)).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


class ChannelBias(nn.Module):
    """Adds a per-channel bias in its own dtype (float32): a folded BatchNorm's shift, kept
    out of a bf16 convolution, whose bias would be rounded to 8 bits of mantissa."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone().float().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def _split_biases(trunk: nn.Module, keep: set[str]) -> None:
    """Each conv not named in ``keep`` loses its bias to a :class:`ChannelBias` after it."""
    for name, module in list(trunk.named_modules()):
        if isinstance(module, nn.Conv2d) and module.bias is not None and name not in keep:
            bias, module.bias = module.bias, None
            parent, _, leaf = name.rpartition(".")
            setattr(trunk.get_submodule(parent) if parent else trunk, leaf, nn.Sequential(module, ChannelBias(bias)))


class _Inference(nn.Module):
    """Normalisation (float32) then the folded trunk in its per-module dtypes."""

    def __init__(self, backbone: Backbone, dtype: torch.dtype, float32: Sequence[str]):
        super().__init__()
        self.trunk = fold_batchnorm(backbone.trunk)
        names = [name.removeprefix("trunk.") for name in float32]  # as in the backbone: "trunk.3.0.conv_dw"
        inside = {n for name in names for n, _ in self.trunk.get_submodule(name).named_modules(prefix=name)}
        if dtype != torch.float32:
            _split_biases(self.trunk, inside)
        for name, module in self.trunk.named_modules():
            # only leaves own weights here; converting all and back would round float32 ones
            if name not in inside and not isinstance(module, ChannelBias):
                for key, param in module.named_parameters(recurse=False):
                    setattr(module, key, nn.Parameter(param.detach().to(dtype), requires_grad=False))
        for module in self.trunk.modules():
            if next(module.parameters(recurse=False), None) is not None:
                module.register_forward_pre_hook(_cast_to_weights)
        self.register_buffer("mean", backbone.mean.detach().clone().float(), persistent=False)
        self.register_buffer("std", backbone.std.detach().clone().float(), persistent=False)
        self.to(memory_format=torch.channels_last)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.trunk((rgb - self.mean) / self.std)  # (B, C, H/16, W/16), in the last module's dtype


def _signature(backbone: Backbone, dtype: torch.dtype, float32: Sequence[str]) -> tuple:
    params = tuple((p.data_ptr(), p._version) for p in backbone.parameters())
    return params, dtype, tuple(float32)


@torch.no_grad()
def frozen_trunk(backbone: Backbone, dtype: torch.dtype, float32: Sequence[str] = ()) -> torch.jit.ScriptModule:
    """The traced, frozen inference copy of ``backbone`` (CPU), built on first use per weights.

    Args:
        dtype: dtype of every module but ``float32`` (torch.bfloat16, or torch.float32).
        float32: module names (``backbone.named_modules()``) kept in float32.

    Returns:
        A module mapping (B, 3, H, W) float32 pixels in [0, 1], H and W multiples of 16,
        to (B, C, H/16, W/16) features (not normalised) in its last module's dtype.
    """
    if backbone.spec.arch not in FOLDABLE:
        raise ValueError(f"no frozen trunk for {backbone.spec.arch!r}; foldable: {', '.join(FOLDABLE)}")
    signature = _signature(backbone, dtype, float32)
    built = _BUILT.get(backbone)
    if built is not None and built[0] == signature:
        return built[1]
    module = _Inference(backbone, dtype, float32).eval()
    example = torch.rand(1, 3, 4 * STRIDE, 4 * STRIDE).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():  # timm's "same" pads become constants: right for every even size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks TorchScript deprecated; see README
        frozen = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False))
    _BUILT[backbone] = (signature, frozen)
    return frozen
