"""A cached frozen trunk: fine-tune only the backbone's last stage, on cached inputs.

On two CPU cores a full-trunk forward and backward of every map a training step touches
costs about a minute. Freezing the trunk up to its last stage (EfficientNet-Lite0:
``blocks[4]``, 80 -> 112 channels; ResNet-18: ``layer3``) makes that prefix a fixed
function — exactly, since the backbone runs with BatchNorm in eval mode — so its output
(the last stage's input) is computed once per image and scale, kept in half precision
on disk beside the feature cache, and a training step or a refresh of the collection's
features then runs only the last stage.

The cache is keyed by a hash of the frozen prefix's weights (not the model id): every
model fine-tuned this way from one parent shares its parent's prefix, so all rounds of a
project read the same cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from engine.backbone import STRIDE, Backbone
from engine.detect import FeatureBank
from engine.features import (
    FeatureCache,
    FeatureConfig,
    FeatureFailure,
    FeaturePyramid,
    extract_pyramids,
    onnx_serves,
    split_cached,
)
from engine.images import ImageReadError, image_size, load_rgb
from engine.onnx_trunk import onnx_forward, onnx_session


def split_trunk(backbone: Backbone) -> tuple[nn.Module, nn.Module]:
    """(frozen prefix, last stage) of the backbone's trunk (an ``nn.Sequential``)."""
    trunk = backbone.trunk
    if not isinstance(trunk, nn.Sequential) or len(trunk) < 2:
        raise ValueError(f"{backbone.model_id}: the trunk must be an nn.Sequential of stages to split it")
    return trunk[:-1], trunk[-1]


@torch.no_grad()
def prefix_beside_features(backbone: Backbone) -> bool:
    """Whether the last stage keeps its input's stride, so that the prefix's output and the
    features fit in one ONNX output ("both", :mod:`engine.onnx_trunk`): EfficientNet-Lite0's
    does, ResNet-18's layer3 halves it."""
    try:
        prefix, last = split_trunk(backbone)
    except ValueError:
        return False
    x = torch.zeros(1, 3, 2 * STRIDE, 2 * STRIDE, device=next(backbone.parameters()).device)
    inputs = prefix(x)
    return inputs.shape[-2:] == last(inputs).shape[-2:]


def freeze_prefix(backbone: Backbone) -> list[nn.Parameter]:
    """Stop gradients into the prefix; return the last stage's parameters (to optimise)."""
    prefix, last = split_trunk(backbone)
    for p in prefix.parameters():
        p.requires_grad_(False)
    return list(last.parameters())


def prefix_key(backbone: Backbone) -> str:
    """A short hash of the prefix's weights and buffers: equal prefixes share a cache."""
    prefix, _ = split_trunk(backbone)
    digest = hashlib.sha256(backbone.spec.arch.encode())
    for name, tensor in prefix.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def prefix_forward(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, C', H/16, W/16) input of the last stage, in float32
    (through ONNX Runtime where it serves the backbone, :mod:`engine.onnx_trunk`)."""
    prefix, _ = split_trunk(backbone)
    if onnx_serves(backbone) and not torch.is_grad_enabled():
        out = onnx_forward(backbone, pixels, "prefix")
        if out is not None:
            return out
    return prefix((pixels - backbone.mean) / backbone.std)


def last_stage(backbone: Backbone, inputs: torch.Tensor, amp: bool = True) -> torch.Tensor:
    """(B, C', h, w) cached inputs -> (B, C, h, w) L2-normalised float32 features."""
    _, last = split_trunk(backbone)
    device = next(last.parameters()).device
    # channels-last: the same float32 convolutions, faster on the CPU (oneDNN's depthwise
    # and 1x1 kernels). `python -m benchmarks.train --layouts` (16 maps of 80x30x40, one
    # thread of the loaded 2-core machine, issue 10): forward 3.41 -> 2.52 s, forward and
    # backward (a training step) 16.6 -> 10.1 s.
    x = inputs.to(device=device, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        feats = last(x)
    return F.normalize(feats.float(), dim=1)


@dataclass
class TrunkInputs:
    """The last stage's input of every image at every level, half precision on the CPU.

    Attributes:
        image_ids: N ids, in the order pair references index.
        maps: ``maps[i][k]`` (C', h_k, w_k) of image i at level k.
        sizes: (W, H) original pixels of every image.
    """

    image_ids: list[str]
    maps: list[list[torch.Tensor]]
    sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_ids)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for levels in self.maps for t in levels)


class TrunkCache(FeatureCache):
    """Last-stage inputs on disk, keyed by image content hash + prefix hash + feature config.

    Layout: ``root/trunk-<arch>-<prefix key>/<config key>/<hash[:2]>/<hash>.npz`` (the
    feature cache's layout; a pyramid's levels hold the inputs).
    """

    def __init__(self, root: str | Path, backbone: Backbone, config: FeatureConfig):
        super().__init__(root, f"trunk-{backbone.spec.arch}-{prefix_key(backbone)}", config)


@torch.no_grad()
def trunk_inputs(backbone: Backbone, items: Iterable[tuple[str, str | Path]], config: FeatureConfig = FeatureConfig(),
                 cache_root: str | Path | None = None, hashes: dict[str, str] | None = None,
                 batch_size: int = 16, progress: bool = True) -> tuple[TrunkInputs, list[FeatureFailure]]:
    """Load from cache or compute the last stage's inputs of ``(image_id, path)`` items.

    Images are decoded and resized as :func:`engine.features.collection_features` does,
    so the last stage on these inputs gives the same pyramids as the whole backbone.
    """
    items = list(items)
    cache = TrunkCache(cache_root, backbone, config) if cache_root else None
    failures: list[FeatureFailure] = []
    found, todo = split_cached(items, cache, hashes, failures)
    bar = tqdm(total=len(todo), desc="trunk cache", unit="img", disable=not progress or not todo)
    for start in range(0, len(todo), batch_size):
        chunk, arrays, sizes = [], [], []
        for pos, image_id, path, digest in todo[start : start + batch_size]:
            try:
                size = image_size(path)
                rgb = load_rgb(path, max_side=2 * config.max_side * STRIDE)  # as collection_features decodes
            except ImageReadError as err:
                failures.append(FeatureFailure(err.path, err.reason))
                continue
            chunk.append((pos, image_id, digest))
            arrays.append(rgb)
            sizes.append(size)
        forward = lambda pixels: prefix_forward(backbone, pixels)  # noqa: E731 - closes over the backbone
        for (pos, image_id, digest), pyramid in zip(chunk, extract_pyramids(backbone, arrays, config, sizes, forward)):
            pyramid = FeaturePyramid(tuple(t.half() for t in pyramid.levels), pyramid.image_size)
            if cache:
                cache.put(digest, pyramid)
            found[pos] = (image_id, pyramid)
        bar.update(len(todo[start : start + batch_size]))
    bar.close()
    order = sorted(found)
    inputs = TrunkInputs([found[p][0] for p in order], [[t.half() for t in found[p][1].levels] for p in order],
                         [tuple(found[p][1].image_size) for p in order])
    return inputs, failures


@torch.no_grad()
def inputs_from_tensors(backbone: Backbone, images: Sequence[torch.Tensor], config: FeatureConfig,
                        image_sizes: Sequence[tuple[int, int]] | None = None) -> TrunkInputs:
    """Trunk inputs of in-memory (3, H, W) uint8 images (tests, benchmarks)."""
    arrays = [img.permute(1, 2, 0).contiguous().numpy() for img in images]
    sizes = list(image_sizes) if image_sizes is not None else [(a.shape[1], a.shape[0]) for a in arrays]
    forward = lambda pixels: prefix_forward(backbone, pixels)  # noqa: E731
    pyramids = list(extract_pyramids(backbone, arrays, config, sizes, forward))
    return TrunkInputs([str(i) for i in range(len(images))], [[t.half() for t in p.levels] for p in pyramids],
                       [tuple(int(v) for v in s) for s in sizes])


@torch.no_grad()
def pyramids_from_inputs(backbone: Backbone, inputs: TrunkInputs, batch_size: int = 32,
                         amp: bool = True) -> list[FeaturePyramid]:
    """Every image's pyramid, running only the last stage (maps of one shape batched)."""
    n_levels = len(inputs.maps[0]) if len(inputs) else 0
    out: list[list[torch.Tensor | None]] = [[None] * n_levels for _ in range(len(inputs))]
    for k in range(n_levels):
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i in range(len(inputs)):
            by_shape.setdefault(tuple(inputs.maps[i][k].shape[1:]), []).append(i)
        for members in by_shape.values():
            for j in range(0, len(members), batch_size):
                part = members[j : j + batch_size]
                feats = last_stage(backbone, torch.stack([inputs.maps[i][k] for i in part]), amp).cpu()
                for i, f in zip(part, feats):
                    out[i][k] = f
    return [FeaturePyramid(tuple(levels), inputs.sizes[i]) for i, levels in enumerate(out)]


def bank_from_inputs(backbone: Backbone, inputs: TrunkInputs, batch_size: int = 32, amp: bool = True) -> FeatureBank:
    """The collection's current features as a bank on the backbone's device (last stage only)."""
    device = next(backbone.parameters()).device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return FeatureBank.build(inputs.image_ids, pyramids_from_inputs(backbone, inputs, batch_size, amp), device=device, dtype=dtype)


class TrunkByProduct:
    """Feature extraction that keeps the frozen trunk's output on the way (one forward, two
    caches): the prefix runs once per image and scale, its output goes to the trunk cache,
    and the last stage on it gives the features. A training round then finds every
    image's trunk input cached and never runs the trunk again.

    The prefix runs in float32 on CPUs, as :func:`trunk_inputs` does (the cache must be
    what training's forward computes); the features are the last stage of that output,
    so they equal the whole backbone's in float32. Use as ``extract=`` of
    :func:`engine.features.collection_features`.
    """

    def __init__(self, cache_root: str | Path, backbone: Backbone, config: FeatureConfig):
        self.cache = TrunkCache(cache_root, backbone, config)

    @staticmethod
    def available(backbone: Backbone) -> bool:
        """Whether the backbone's trunk splits into a prefix and a last stage."""
        try:
            split_trunk(backbone)
        except ValueError:
            return False
        return True

    @torch.no_grad()
    def __call__(self, backbone: Backbone, arrays: Sequence, config: FeatureConfig, sizes: Sequence[tuple[int, int]],
                 hashes: Sequence[str]) -> Iterator[FeaturePyramid]:
        if onnx_serves(backbone) and prefix_beside_features(backbone) and onnx_session(backbone, "both") is not None:
            # One ONNX Runtime pass gives both, the last stage's input in front of the features
            split = -backbone.channels

            def forward(pixels: torch.Tensor) -> torch.Tensor:
                both = onnx_forward(backbone, pixels, "both")
                # normalised as engine.features.embed_pixels does, so the numbers are the same
                # bit for bit as a feature pass without the by-product (the local executor's)
                return torch.cat([both[:, :split], F.normalize(both[:, split:].contiguous(), dim=1)], dim=1)

            both = list(extract_pyramids(backbone, arrays, config, sizes, forward))
            inputs = [FeaturePyramid(tuple(t[:split] for t in p.levels), p.image_size) for p in both]
            pyramids = [FeaturePyramid(tuple(t[split:] for t in p.levels), p.image_size) for p in both]
        else:
            forward = lambda pixels: prefix_forward(backbone, pixels)  # noqa: E731 - closes over the backbone
            inputs = list(extract_pyramids(backbone, arrays, config, sizes, forward))
            as_inputs = TrunkInputs([str(i) for i in range(len(inputs))], [list(p.levels) for p in inputs],
                                    [p.image_size for p in inputs])
            pyramids = pyramids_from_inputs(backbone, as_inputs)
        for digest, pyramid in zip(hashes, inputs):
            if not self.cache.path(digest).is_file():
                self.cache.put(digest, FeaturePyramid(tuple(t.half() for t in pyramid.levels), pyramid.image_size))
        yield from pyramids


def fill_feature_cache(backbone: Backbone, inputs: TrunkInputs, cache_root: str | Path, config: FeatureConfig,
                       hashes: dict[str, str], batch_size: int = 32) -> int:
    """Write the backbone's pyramids into its feature cache from the trunk inputs, so the
    collection's refresh with a fine-tuned model runs only the last stage. Returns how
    many pyramids were written."""
    cache = FeatureCache(cache_root, backbone.model_id, config)
    todo = [i for i, image_id in enumerate(inputs.image_ids) if not cache.path(hashes[image_id]).is_file()]
    if not todo:
        return 0
    subset = TrunkInputs([inputs.image_ids[i] for i in todo], [inputs.maps[i] for i in todo], [inputs.sizes[i] for i in todo])
    for image_id, pyramid in zip(subset.image_ids, pyramids_from_inputs(backbone, subset, batch_size)):
        cache.put(hashes[image_id], pyramid)
    return len(todo)


def cached_bank(backbone: Backbone, inputs: TrunkInputs, cache_root: str | Path, config: FeatureConfig,
                hashes: dict[str, str], batch_size: int = 32) -> FeatureBank:
    """The backbone's bank of the collection, read from its feature cache; only the images
    missing there run the last stage on their trunk inputs (and are written to it).

    A round needs its parent's features (and the lineage root's, to mine with) for every
    image: discovery's feature pass, or the previous round's refresh, already wrote them,
    and reading them back costs a fraction of running the last stage again (issue 10:
    ~0.6 s per image on two loaded cores, the largest part of mining's time that grew with
    the collection). The cached features are float16 (``FeatureConfig.cache_dtype``), as
    discovery reads them: mining then sees the features its links were verified with.
    """
    fill_feature_cache(backbone, inputs, cache_root, config, hashes, batch_size)
    cache = FeatureCache(cache_root, backbone.model_id, config)
    pyramids = [cache.get(hashes[image_id]) for image_id in inputs.image_ids]
    lost = [image_id for image_id, p in zip(inputs.image_ids, pyramids) if p is None]
    if lost:  # unreadable since written (a concurrent clean-up): the last stage, not a crash
        redo = TrunkInputs(lost, [inputs.maps[inputs.image_ids.index(i)] for i in lost],
                           [inputs.sizes[inputs.image_ids.index(i)] for i in lost])
        fresh = dict(zip(lost, pyramids_from_inputs(backbone, redo, batch_size)))
        pyramids = [p if p is not None else fresh[i] for i, p in zip(inputs.image_ids, pyramids)]
    device = next(backbone.parameters()).device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return FeatureBank.build(inputs.image_ids, pyramids, device=device, dtype=dtype)
