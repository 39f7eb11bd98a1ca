"""CPU inference of a backbone through ONNX Runtime: float32 features, ~3x faster.

Issue 12 asks for features >= 2.5x faster than PyTorch's float32 on the CPU, with every
cell's cosine to float32 >= 0.995. Eager PyTorch runs EfficientNet-Lite0 as ~100 small
ops, and bf16 autocast (session 4) or a traced copy with BatchNorm folded (session 5)
reached only ~1.6x; this path ~3x (benchmarks.detect --features-only). ONNX Runtime fuses each convolution with its BatchNorm and ReLU6
and runs them in its blocked (NCHWc) layout, in float32: the features equal PyTorch's
float32 ones to rounding (cosine >= 0.99999), so nothing is traded for the speed.

The exported graph is the backbone's forward (normalisation, then the trunk) with one
change: timm's TensorFlow "same" padding, which computes its pads from the input's size
at run time, gets constant pads. Every input here is a whole number of cells (a multiple
of the stride, 16 pixels), so every stride-s convolution of (dilated) kernel k sees an
input that is a multiple of s and pads k - s in all (the smaller half first, as
TensorFlow does). With constant pads ONNX Runtime folds each pad into its convolution;
with run-time pads a quarter of the time went to the pads and to layout conversions
around them (one 640 x 480 image, 7 levels, one thread: 127 -> 96 ms).

A session is exported and built once per backbone, weights and thread count (~0.2 s),
kept in memory and never saved; a training step changes the weights in place (their
version counters move), so the next inference builds it again. Training, CUDA and
inputs that are not whole cells never use it.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
import weakref
from functools import lru_cache

import torch
from torch import nn

from engine.backbone import STRIDE, Backbone

log = logging.getLogger(__name__)

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backbone -> {outputs: (signature, session)}
OUTPUTS = ("features", "prefix", "both")
_FAILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backbone -> outputs whose export failed


@lru_cache(maxsize=1)
def onnx_runtime_available() -> bool:
    """Whether ONNX Runtime and the exporter's ``onnx`` package can be imported."""
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def static_same_padding(trunk: nn.Module) -> nn.Module:
    """A copy of ``trunk`` whose TensorFlow-"same" convolutions (timm's ``Conv2dSame``) pad
    by constants, exact for inputs whose sides are multiples of every stride on the way
    (a whole number of cells)."""
    from timm.layers import Conv2dSame

    out = copy.deepcopy(trunk).eval()
    for name, module in list(out.named_modules()):
        if not isinstance(module, Conv2dSame):
            continue
        pads = []
        for k, s, d in zip(module.kernel_size, module.stride, module.dilation):
            total = max(d * (k - 1) + 1 - s, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, 0,
                         module.dilation, module.groups, module.bias is not None)
        conv.load_state_dict(module.state_dict())
        parent, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, leaf,
                nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv))
    return out


class _Exported(nn.Module):
    """The backbone's float32 forward with constant pads. ``outputs``: "features" (the
    trunk's output, not normalised), "prefix" (the last stage's input, what the trunk
    cache of :mod:`engine.trunk_cache` holds) or "both" (prefix then features along
    channels, for trunks whose last stage keeps its input's stride)."""

    def __init__(self, backbone: Backbone, outputs: str):
        super().__init__()
        self.trunk = static_same_padding(backbone.trunk).float()
        for module in self.trunk.modules():
            # PyTorch's bf16 path hooks some modules to run in float32 (engine.features); traced,
            # the hooks add casts that change the graph's rounding (~5e-7), and an image's
            # features must not depend on which path ran first in the process
            module._forward_pre_hooks.clear()
            module._forward_hooks.clear()
        self.outputs = outputs
        self.register_buffer("mean", backbone.mean.detach().clone().float(), persistent=False)
        self.register_buffer("std", backbone.std.detach().clone().float(), persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = (rgb - self.mean) / self.std
        if self.outputs == "features":
            return self.trunk(x)
        prefix = self.trunk[:-1](x)
        return prefix if self.outputs == "prefix" else torch.cat([prefix, self.trunk[-1](prefix)], dim=1)


def _signature(backbone: Backbone) -> tuple:
    tensors = list(backbone.parameters()) + list(backbone.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors), torch.get_num_threads()


@torch.no_grad()
def _build(backbone: Backbone, outputs: str):
    import onnxruntime as ort

    module = _Exported(backbone, outputs).cpu().eval()
    blob = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.rand(1, 3, 4 * STRIDE, 4 * STRIDE), blob, input_names=["rgb"],
                          output_names=["features"], opset_version=17, dynamo=False,
                          dynamic_axes={"rgb": {0: "batch", 2: "height", 3: "width"},
                                        "features": {0: "batch", 2: "rows", 3: "columns"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # what the process gives PyTorch (1 per Ray actor)
    options.inter_op_num_threads = 1
    # Idle worker threads that spin steal the core from the rest of the pipeline (decoding,
    # resizing, other actors on a shared machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(blob.getvalue(), options, providers=["CPUExecutionProvider"])


def onnx_applies(backbone: Backbone) -> bool:
    """ONNX Runtime can serve the backbone's inference: on the CPU, in eval mode, installed
    (inputs must be whole cells, as :func:`engine.features.embed_pixels` requires)."""
    return (next(backbone.parameters()).device.type == "cpu" and not backbone.training
            and "features" not in _FAILED.get(backbone, ()) and onnx_runtime_available())


def onnx_session(backbone: Backbone, outputs: str = "features"):
    """The ONNX Runtime session of ``backbone``'s current weights (built on first use), or
    None when its export fails (PyTorch's float32 forward then serves, the same numbers)."""
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")
    if outputs in _FAILED.get(backbone, ()):
        return None
    built = _SESSIONS.setdefault(backbone, {})
    signature = _signature(backbone)
    if outputs in built and built[outputs][0] == signature:
        return built[outputs][1]
    try:
        session = _build(backbone, outputs)
    except Exception as err:  # an architecture the exporter cannot trace: slower, never wrong
        log.warning("ONNX export of %s failed (%s); its CPU features run in PyTorch float32",
                    backbone.model_id, err)
        _FAILED.setdefault(backbone, set()).add(outputs)
        return None
    built[outputs] = (signature, session)
    return session


def onnx_forward(backbone: Backbone, pixels: torch.Tensor, outputs: str = "features") -> torch.Tensor | None:
    """(B, 3, 16h, 16w) pixels in [0, 1] -> (B, C, h, w) float32 ``outputs`` (see
    :class:`_Exported`; features are not normalised), or None when the backbone cannot
    be exported."""
    if pixels.shape[-1] % STRIDE or pixels.shape[-2] % STRIDE:
        raise ValueError(f"input sides must be multiples of {STRIDE} pixels (whole cells), got {tuple(pixels.shape[-2:])}")
    session = onnx_session(backbone, outputs)
    if session is None:
        return None
    rgb = pixels.detach().float().contiguous().numpy()
    return torch.from_numpy(session.run(None, {"rgb": rgb})[0])
