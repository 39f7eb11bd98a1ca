"""Dense multi-scale features: an image becomes a pyramid of L2-normalised feature maps.

Paper §3.2: "We resized all images such that their maximum spatial dimension in the
feature map was 40, leading to approximately 1k features per image at the maximum
scale. For each image, we used 7 different scales, regularly sampled on two octaves
with 3 scales per octave." Level 0 is that largest (reference) scale; level k has
longer side ``40 * 2^(-k/3)`` cells, down to 10 at level 6.

Speed on the CPU (issue 12): the backbone runs in float32 through ONNX Runtime
(:mod:`engine.onnx_trunk`); without it (or with ``ARTMINER_PRECISION=bf16``) in PyTorch,
channels-last, under bfloat16 autocast where the CPU has native bf16 (avx512_bf16 / AMX,
:func:`cpu_precision`). Each image is resized once per level.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.backbone import STRIDE, Backbone
from engine.images import ImageReadError, content_hash, image_size, load_rgb
from engine.onnx_trunk import onnx_applies, onnx_forward, onnx_runtime_available

# Bumped whenever one model and one FeatureConfig start computing different numbers, so
# that a feature cache (and the ANN index keyed by it) from before is not mixed with new
# features. 2: FLOAT32_MODULES keep EfficientNet-Lite0's first layers out of bf16 autocast.
# 3: the CPU precision is a property of the machine (cpu_precision), no longer a timing
# that could pick float32 in one process and bf16 in the next; it is part of the key.
NUMERICS_VERSION = 3


@dataclass(frozen=True)
class FeatureConfig:
    max_side: int = 40  # longer feature-map side at the reference scale (paper: 40, ~1k cells)
    n_scales: int = 7  # paper: 7 scales ...
    scales_per_octave: int = 3  # ... over two octaves, 3 per octave
    cache_dtype: str = "float16"  # half precision on disk: ~0.7 MB per image at defaults
    # The paper resizes every image to 40 cells, so a 480 px image is upsampled to 640 px:
    # more cost, no more detail. False caps the reference level at the image's own pixels
    # (and scales the other levels down from there); True is the paper's rule.
    upsample: bool = True

    def sides(self) -> tuple[int, ...]:
        """Longer feature side per level, largest first: (40, 32, 25, 20, 16, 13, 10)."""
        return tuple(
            max(1, round(self.max_side * 2 ** (-k / self.scales_per_octave))) for k in range(self.n_scales)
        )

    def reference_side(self, image_size: tuple[int, int]) -> float:
        """Longer side in cells of level 0 for an image of (W, H) pixels."""
        if self.upsample:
            return float(self.max_side)
        return min(float(self.max_side), max(1.0, max(image_size) / STRIDE))

    def image_sides(self, image_size: tuple[int, int]) -> tuple[float, ...]:
        """Longer side in cells per level for an image of (W, H) pixels, largest first."""
        ref = self.reference_side(image_size)
        if ref >= self.max_side:
            return tuple(float(s) for s in self.sides())
        return tuple(max(1.0, ref * 2 ** (-k / self.scales_per_octave)) for k in range(self.n_scales))

    def key(self) -> str:
        fields = asdict(self)
        if self.upsample:  # the paper's rule keeps the key it had before the field existed
            fields.pop("upsample")
        if NUMERICS_VERSION > 1:  # caches of older numerics are recomputed, never mixed in
            fields["numerics"] = NUMERICS_VERSION
        if NUMERICS_VERSION > 2:
            fields["cpu_precision"] = cpu_precision()
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def level_shape(image_size: tuple[int, int], side: float) -> tuple[int, int]:
    """(h, w) in cells for an image of (W, H) pixels whose longer side gets ``side`` cells."""
    width, height = image_size
    scale = side / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class FeaturePyramid:
    """Per-level feature maps of one image.

    Attributes:
        levels: tuple of (C, h_k, w_k) tensors, L2-normalised along C, largest first.
        image_size: (W, H) of the original (EXIF-upright) image in pixels.
    """

    levels: tuple[torch.Tensor, ...]
    image_size: tuple[int, int]

    @property
    def reference(self) -> torch.Tensor:
        return self.levels[0]

    def cell_size(self, level: int) -> tuple[float, float]:
        """Pixels per feature cell (x, y) at a level: cell (i, j) covers
        ``[j*cx, (j+1)*cx) x [i*cy, (i+1)*cy)`` in the original image."""
        _, h, w = self.levels[level].shape
        return self.image_size[0] / w, self.image_size[1] / h

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FeaturePyramid:
        return FeaturePyramid(tuple(t.to(device=device, dtype=dtype) for t in self.levels), self.image_size)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.levels)


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].float().div_(255.0)


def resize_to_cells(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, 16h, 16w): the pixels that give exactly ``shape`` = (h, w) cells."""
    h, w = shape
    return F.interpolate(image, size=(h * STRIDE, w * STRIDE), mode="bilinear", antialias=True, align_corners=False)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bfloat16 in hardware (avx512_bf16 or AMX)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: trust oneDNN's own check
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


CHANNELS_LAST = True  # benchmarks.detect turns it off to time the old NCHW path
# float32 CPU features through ONNX Runtime (engine.onnx_trunk) when it is installed; they
# equal PyTorch's float32 features to rounding, so both share the "fp32" cache key.
# benchmarks.detect turns it off to time PyTorch's paths.
ONNX_RUNTIME = True

# Modules of a trunk that run in float32 under bf16 autocast (issue 12: every cell's cosine
# to float32 >= 0.995). EfficientNet-Lite0 under bf16 throughout: mean 0.996 but 20 % of
# cells below 0.995 (worst 0.85; all levels, borders no worse); running the later stages
# in float32 changes nothing, so the error enters early: the stem and the first block in
# float32 (no slower: a 3-channel convolution gains nothing from bf16) leave 0.3 % below
# 0.995 (worst 0.993), and the first stride-4 depthwise convolution in float32 too none
# (worst 0.996 on 12 demo images x 7 levels; benchmarks.detect prints it). The cost is
# that depthwise convolution: all-bf16 features are ~1.5x faster (benchmarks.detect:
# 3.32 vs 2.15 images/s, interleaved), float32 ones ~1.5x slower.
FLOAT32_MODULES: dict[str, tuple[str, ...]] = {
    "effnet-lite0": ("trunk.0", "trunk.1", "trunk.2", "trunk.3.0.conv_dw", "trunk.3.0.bn2"),
}


def _enter_float32(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the module runs in float32 even inside an autocast region."""
    context = torch.autocast(args[0].device.type, enabled=False)
    context.__enter__()
    module._float32_context = context
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _leave_float32(module: torch.nn.Module, args: tuple, output: Any) -> None:
    module._float32_context.__exit__(None, None, None)


def _float32_modules(backbone: Backbone) -> None:
    """Once per backbone: hooks that keep :data:`FLOAT32_MODULES` in float32 (no effect
    outside autocast, so training and float32 features are unchanged)."""
    if getattr(backbone, "_float32_hooks", False):
        return
    names = set(FLOAT32_MODULES.get(backbone.spec.arch, ()))
    for name, module in backbone.named_modules():
        if name in names:
            module.register_forward_pre_hook(_enter_float32)
            module.register_forward_hook(_leave_float32, always_call=True)
    backbone._float32_hooks = True


def cpu_precision() -> str:
    """The precision of CPU features: "bf16" or "fp32".

    ``ARTMINER_PRECISION=fp32|bf16`` when set, else bf16 exactly where the CPU computes it
    natively (bf16 emulated in software is slower than float32). A property of the machine
    and the environment, never of a timing: two processes on one machine compute the same
    features (a timing under load once made a project's local and Ray runs differ), and
    the feature cache's key holds it, so caches of both precisions are never mixed.
    """
    forced = os.environ.get("ARTMINER_PRECISION", "auto")
    if forced in ("fp32", "bf16"):
        return forced
    if ONNX_RUNTIME and onnx_runtime_available():
        return "fp32"  # ONNX Runtime's float32 is faster than PyTorch's bf16 (engine.onnx_trunk)
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast_dtype(backbone: Backbone, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a no-grad forward on ``device``, or None for float32.

    CUDA: float16. CPU: :func:`cpu_precision`.
    """
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_precision() == "bf16" else None


def _channels_last(backbone: Backbone) -> None:
    """Convert the weights once: depthwise and 1x1 convolutions run several times faster
    channels-last in oneDNN (and on tensor cores)."""
    if CHANNELS_LAST and not getattr(backbone, "_channels_last", False):
        backbone.to(memory_format=torch.channels_last)
        backbone._channels_last = True


@torch.no_grad()
def embed_pixels(backbone: Backbone, pixels: torch.Tensor,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(B, 3, 16h, 16w) pixels in [0, 1] -> (B, C, h, w) features, L2-normalised per location, float32.

    ``forward``: run instead of the whole backbone, its output returned as is (not normalised).
    """
    device = next(backbone.parameters()).device
    dtype = autocast_dtype(backbone, device)
    if forward is not None and forward is not backbone and device.type == "cpu":
        dtype = None  # a frozen trunk's cached output must equal what training computes in float32
    if (forward is None or forward is backbone) and dtype is None and onnx_serves(backbone):
        feats = onnx_forward(backbone, pixels)
        if feats is not None:
            return feats if forward is not None else F.normalize(feats, dim=1).contiguous()
    _channels_last(backbone)
    _float32_modules(backbone)
    layout = torch.channels_last if CHANNELS_LAST else torch.contiguous_format
    pixels = pixels.to(device).contiguous(memory_format=layout)
    with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        feats = (forward or backbone)(pixels)
    if forward is not None:
        return feats.float().contiguous()
    return F.normalize(feats.float(), dim=1).contiguous()


def onnx_serves(backbone: Backbone) -> bool:
    """Whether the backbone's float32 CPU inference runs in ONNX Runtime (engine.onnx_trunk)."""
    return ONNX_RUNTIME and cpu_precision() == "fp32" and onnx_applies(backbone)


def embed_cells(backbone: Backbone, image: torch.Tensor, shape: tuple[int, int],
                forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Resize ``image`` (B, 3, H, W) so the backbone yields exactly ``shape`` = (h, w) cells.

    Args:
        forward: run instead of the whole backbone, its output returned as is (the
            frozen trunk cache of :mod:`engine.trunk_cache` stores a stage's input).

    Returns:
        (B, C, h, w) features, L2-normalised per location (unless ``forward``), float32.
    """
    return embed_pixels(backbone, resize_to_cells(image, shape), forward)


def extract_pyramid(backbone: Backbone, rgb: np.ndarray, config: FeatureConfig = FeatureConfig()) -> FeaturePyramid:
    """Features of one image at every level of ``config``.

    Args:
        rgb: (H, W, 3) uint8 image (may already be downscaled; sizes are given by
            ``image_size`` in that case through :func:`extract_pyramids`).
    """
    return next(extract_pyramids(backbone, [rgb], config, [(rgb.shape[1], rgb.shape[0])]))


def extract_pyramids(
    backbone: Backbone,
    images: Sequence[np.ndarray],
    config: FeatureConfig,
    image_sizes: Sequence[tuple[int, int]],
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[FeaturePyramid]:
    """Pyramids for a batch of images; images of equal level shape run as one batch.

    ``image_sizes`` are the original (W, H) sizes, which define the level shapes (the
    arrays may have been decoded at reduced size to save time). ``forward``: see
    :func:`embed_cells`.
    """
    tensors = [rgb_to_tensor(rgb) for rgb in images]
    sides = [config.image_sides(size) for size in image_sizes]
    levels: list[list[torch.Tensor | None]] = [[None] * config.n_scales for _ in images]
    for k in range(config.n_scales):
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(image_sizes):
            groups.setdefault(level_shape(size, sides[i][k]), []).append(i)
        for shape, members in groups.items():
            # Each image is resized once, to the group's pixel size, then run together.
            batch = torch.cat([resize_to_cells(tensors[i], shape) for i in members])
            feats = embed_pixels(backbone, batch, forward).cpu()
            for j, i in enumerate(members):
                levels[i][k] = feats[j]
    for i, size in enumerate(image_sizes):
        yield FeaturePyramid(tuple(levels[i]), (int(size[0]), int(size[1])))


_LOCAL_HEADER = b"PK\x03\x04"
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_stored_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read with one file read when its members are stored
    uncompressed (what ``np.savez`` writes), else by ``np.load``.

    Why: ``np.load`` streams each member through zipfile and parses it apart; for a
    pyramid's nine small members that overhead, not the disk, set the cache's read rate,
    and an indexed query reads 150 pyramids (benchmarks.detect --features-only on the
    demo: 919 pyramids/s through np.load, 3,722 with this reader). The arrays are views
    into one writable buffer, no copy. Members' CRC-32 is not checked (np.load's zip
    streams did): cache files are only ever written whole, by an atomic rename.

    Raises:
        zipfile.BadZipFile, ValueError, EOFError: a damaged or truncated file.
    """
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.infolist():
            array = _stored_npy(data, member) if member.compress_type == zipfile.ZIP_STORED else None
            if array is None:  # compressed, or a layout this reader does not know: numpy reads it
                with np.load(io.BytesIO(data)) as blob:
                    return {name: blob[name] for name in blob.files}
            arrays[member.filename.removesuffix(".npy")] = array
    return arrays


def _stored_npy(data: bytearray, member: zipfile.ZipInfo) -> np.ndarray | None:
    """The ``.npy`` array a stored zip member holds, as a view into ``data``; None if its
    header is of a version not handled here."""
    offset = member.header_offset
    try:
        if data[offset : offset + 4] != _LOCAL_HEADER:
            raise ValueError(f"member {member.filename!r} has no local header")
        name_len, extra_len = struct.unpack_from("<HH", data, offset + 26)
        start = offset + 30 + name_len + extra_len
        # magic (6 bytes), version (2), header length (2 bytes in version 1, else 4), header
        version = (data[start + 6], data[start + 7])
        if data[start : start + 6] != b"\x93NUMPY" or version not in _NPY_HEADERS:
            return None
        end = start + (10 if version == (1, 0) else 12) + struct.unpack_from("<H" if version == (1, 0) else "<I",
                                                                            data, start + 8)[0]
        shape, fortran, dtype = _npy_header(bytes(data[start:end]))
    except (IndexError, struct.error) as err:
        raise ValueError(f"member {member.filename!r} is cut short") from err
    count = int(np.prod(shape)) if shape else 1
    if end - start + count * dtype.itemsize > member.file_size:
        raise ValueError(f"member {member.filename!r} is cut short")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=end)  # ValueError past the end
    return array.reshape(shape, order="F" if fortran else "C")


@lru_cache(maxsize=4096)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of an .npy header, magic included; cached because a
    collection's pyramids repeat a few shapes and parsing one (a Python literal) costs
    half a pyramid's read."""
    stream = io.BytesIO(header)
    version = np.lib.format.read_magic(stream)
    return _NPY_HEADERS[version](stream)


class FeatureCache:
    """Pyramids on disk, keyed by image content hash + model id + feature config.

    Layout: ``root/<model id>/<config key>/<hash[:2]>/<hash>.npz``. A fine-tuned model has
    a new model id, so its features never mix with its parent's.
    """

    def __init__(self, root: str | Path, model_id: str, config: FeatureConfig):
        safe_model = model_id.replace("/", "_").replace("@", "-")
        self.dir = Path(root) / safe_model / config.key()
        self.config = config

    def path(self, image_hash: str) -> Path:
        return self.dir / image_hash[:2] / f"{image_hash}.npz"

    def get(self, image_hash: str) -> FeaturePyramid | None:
        """The cached pyramid in the cache's dtype (float16 by default), or None."""
        path = self.path(image_hash)
        if not path.is_file():
            return None
        try:
            blob = read_stored_npz(path)
            n = int(blob["n_levels"])
            levels = tuple(torch.from_numpy(blob[f"level{k}"]) for k in range(n))
            size = tuple(int(v) for v in blob["image_size"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            return None  # a cache file cut short by a kill is recomputed, not trusted
        return FeaturePyramid(levels, size)  # type: ignore[arg-type]

    def put(self, image_hash: str, pyramid: FeaturePyramid) -> None:
        path = self.path(image_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"level{k}": t.numpy().astype(self.config.cache_dtype) for k, t in enumerate(pyramid.levels)}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, n_levels=len(pyramid.levels), image_size=np.array(pyramid.image_size), **arrays)
        tmp.replace(path)


@dataclass(frozen=True)
class FeatureFailure:
    path: str
    reason: str


@dataclass
class CollectionFeatures:
    """Pyramids of the readable images of a collection, in input order."""

    image_ids: list[str]
    pyramids: list[FeaturePyramid]
    failures: list[FeatureFailure]


def split_cached(items: Sequence[tuple[str, str | Path]], cache, hashes: dict[str, str] | None,
                 failures: list[FeatureFailure], present_only: bool = False,
                 ) -> tuple[dict[int, tuple[str, Any]], list[tuple[int, str, str, str]]]:
    """Which items a cache (``get(hash)``, ``path(hash)``) already holds, and which to compute.

    Unreadable files go to ``failures``. With ``present_only`` a cached item is only
    checked for, not loaded (its value is None).

    Returns:
        ``{position: (image_id, cached value)}`` and ``[(position, image_id, path, hash)]`` to compute.
    """
    found: dict[int, tuple[str, Any]] = {}
    todo: list[tuple[int, str, str, str]] = []
    for pos, (image_id, path) in enumerate(items):
        try:
            digest = (hashes or {}).get(image_id) or content_hash(path)
        except OSError as err:
            failures.append(FeatureFailure(str(path), f"cannot read file ({err.strerror or err})"))
            continue
        if cache and present_only and cache.path(digest).is_file():
            found[pos] = (image_id, None)
            continue
        cached = cache.get(digest) if cache else None
        if cached is not None:
            found[pos] = (image_id, cached)
        else:
            todo.append((pos, image_id, str(path), digest))
    return found, todo


def collection_features(
    backbone: Backbone,
    items: Iterable[tuple[str, str | Path]],
    config: FeatureConfig = FeatureConfig(),
    cache_root: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
    hashes: dict[str, str] | None = None,
    keep: bool = True,
    extract: Callable[..., Iterator[FeaturePyramid]] | None = None,
) -> CollectionFeatures:
    """Load from cache or compute the pyramids of ``(image_id, path)`` items.

    Unreadable files are reported in ``failures`` by path and skipped; the rest go on.
    ``hashes`` may give known content hashes (from the project store) to skip rehashing.
    With ``keep=False`` (needs a cache) the pyramids are only made sure to be cached and
    ``pyramids`` stays empty, so a 100k-image collection never sits in memory at once.
    ``extract(backbone, arrays, config, sizes, hashes)`` computes the pyramids instead of
    :func:`extract_pyramids` (:class:`engine.trunk_cache.TrunkByProduct` also keeps the
    frozen trunk's output for training, from the same forward pass).
    """
    if not keep and cache_root is None:
        raise ValueError("keep=False needs a cache folder")
    items = list(items)
    cache = FeatureCache(cache_root, backbone.model_id, config) if cache_root else None
    result = CollectionFeatures([], [], [])
    found, todo = split_cached(items, cache, hashes, result.failures, present_only=not keep)
    bar = tqdm(total=len(todo), desc="features", unit="img", disable=not progress or not todo)
    max_pixels = config.max_side * STRIDE
    for start in range(0, len(todo), batch_size):
        chunk, arrays, sizes = [], [], []
        for pos, image_id, path, digest in todo[start : start + batch_size]:
            try:
                size = image_size(path)
                # Decoding at twice the largest level's pixel size keeps antialiasing
                # honest while never decoding a 100-Mpx scan in full.
                rgb = load_rgb(path, max_side=2 * max_pixels)
            except ImageReadError as err:
                result.failures.append(FeatureFailure(err.path, err.reason))
                continue
            sizes.append(size)
            arrays.append(rgb)
            chunk.append((pos, image_id, digest))
        pyramids = (extract(backbone, arrays, config, sizes, [digest for _, _, digest in chunk]) if extract
                    else extract_pyramids(backbone, arrays, config, sizes))
        for (pos, image_id, digest), pyramid in zip(chunk, pyramids):
            if cache:
                cache.put(digest, pyramid)
            found[pos] = (image_id, pyramid if keep else None)
        bar.update(len(todo[start : start + batch_size]))
    bar.close()
    for pos in sorted(found):
        image_id, pyramid = found[pos]
        result.image_ids.append(image_id)
        if keep:
            result.pyramids.append(pyramid)
    return result


class CachedPyramids:
    """Read access to cached pyramids by image id, keeping the most recent few in memory."""

    def __init__(self, cache: FeatureCache, hashes: dict[str, str], keep_in_memory: int = 256):
        self.cache = cache
        self.hashes = hashes
        self._get = lru_cache(maxsize=keep_in_memory)(self._load)

    def _load(self, image_id: str) -> FeaturePyramid:
        pyramid = self.cache.get(self.hashes[image_id])
        if pyramid is None:
            raise KeyError(f"no cached features for image {image_id}")
        return pyramid

    def __call__(self, image_id: str) -> FeaturePyramid:
        return self._get(image_id)
