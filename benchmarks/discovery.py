"""Discovery speed: milliseconds per verified image pair (paper §4.1-4.2).

    python -m benchmarks.discovery [--device cpu|cuda|auto] [--pairs 200] [--images 24]

Builds a small synthetic collection (skimage photographs and textures as backgrounds,
with a few motifs pasted at random scales and places, so some pairs share a detail),
extracts real EfficientNet-Lite0 pyramids at default settings (reference side 40, 7
scales), stores them in a feature cache and loads them back as float16 (a warm cache:
no feature is computed while timing). Then it verifies ``--pairs`` ordered pairs with
the default :class:`~engine.verify.VerifyConfig` (1,000 RANSAC hypotheses per group),
one by one and in batches, and prints the median milliseconds per pair.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.backbone import create_backbone, resolve_device
from engine.features import FeatureCache, FeatureConfig, FeaturePyramid, extract_pyramids
from engine.verify import VerifyConfig, verify_pair, verify_pairs

# ---------------------------------------------------------------- synthetic collection

_BACKGROUNDS = ("brick", "grass", "gravel", "rocket", "hubble_deep_field", "immunohistochemistry", "moon", "camera")
# (skimage image, crop x0, y0, x1, y1): details that recur across the collection.
_MOTIFS = (
    ("chelsea", 120, 20, 330, 230),
    ("coffee", 180, 40, 480, 330),
    ("astronaut", 140, 20, 330, 230),
    ("coins", 10, 10, 200, 150),
    ("clock", 40, 20, 300, 280),
    ("colorwheel", 40, 40, 330, 330),
)


@dataclass(frozen=True)
class SyntheticImage:
    image_id: str
    rgb: np.ndarray  # (H, W, 3) uint8
    background: int  # index into _BACKGROUNDS: images sharing one share texture too
    motifs: dict[int, tuple[int, int, int, int]]  # index into _MOTIFS -> pasted box x0, y0, x1, y1


def _skimage(name: str) -> np.ndarray:
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3].astype(np.uint8)


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    out = F.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def synthetic_collection(n_images: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[SyntheticImage]:
    """``n_images`` noisy crops of backgrounds, each with 1-2 motifs pasted at scale
    0.7-1.4 in non-overlapping places (so no copy hides another)."""
    rng = np.random.default_rng(seed)
    width, height = size
    backgrounds = [_skimage(name) for name in _BACKGROUNDS]
    motifs = [_skimage(name)[y0:y1, x0:x1] for name, x0, y0, x1, y1 in _MOTIFS]
    images = []
    for i in range(n_images):
        background = int(rng.integers(len(backgrounds)))
        source = backgrounds[background]
        zoom = rng.uniform(1.0, 1.6)  # a random crop: no two backgrounds are pixel-identical
        crop_w, crop_h = round(source.shape[1] / zoom), round(source.shape[0] / zoom)
        x, y = rng.integers(0, source.shape[1] - crop_w + 1), rng.integers(0, source.shape[0] - crop_h + 1)
        canvas = _resize(source[y : y + crop_h, x : x + crop_w], width, height).astype(np.int16)
        canvas += rng.integers(-12, 13, canvas.shape).astype(np.int16)
        placed: dict[int, tuple[int, int, int, int]] = {}
        for m in rng.choice(len(motifs), size=rng.integers(1, 3), replace=False):
            scale = rng.uniform(0.7, 1.4)
            w = min(width // 2, round(motifs[m].shape[1] * scale))
            h = min(height, round(motifs[m].shape[0] * w / motifs[m].shape[1]))
            for _ in range(50):  # a free spot, else skip this motif
                x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                if all(x >= b[2] or x + w <= b[0] or y >= b[3] or y + h <= b[1] for b in placed.values()):
                    canvas[y : y + h, x : x + w] = _resize(motifs[m], w, h)
                    placed[int(m)] = (x, y, x + w, y + h)
                    break
        images.append(SyntheticImage(f"syn{i:05d}", canvas.clip(0, 255).astype(np.uint8), background, placed))
    return images


def cached_pyramids(images: list[SyntheticImage], model: str, device: torch.device,
                    cache_root: Path) -> dict[str, FeaturePyramid]:
    """Pyramids of ``images`` through a :class:`FeatureCache` (computed once, then read back)."""
    backbone = create_backbone(model).to(device)
    config = FeatureConfig()
    cache = FeatureCache(cache_root, backbone.model_id, config)
    keys = {im.image_id: hashlib.sha256(im.rgb.tobytes()).hexdigest() for im in images}
    todo = [im for im in images if cache.get(keys[im.image_id]) is None]
    for start in range(0, len(todo), 8):
        chunk = todo[start : start + 8]
        sizes = [(im.rgb.shape[1], im.rgb.shape[0]) for im in chunk]
        for im, pyramid in zip(chunk, extract_pyramids(backbone, [im.rgb for im in chunk], config, sizes)):
            cache.put(keys[im.image_id], pyramid)
    return {im.image_id: cache.get(keys[im.image_id]) for im in images}


# ---------------------------------------------------------------- per-pair timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_pairs(pairs, pyramids, config: VerifyConfig, device: torch.device, batch_size: int):
    """Seconds per pair: one by one (wall, and this process's CPU time, which on a shared
    machine shows the cost without the waiting), and per batch of ``batch_size`` divided
    by its size. Also the regions found both ways, to check that they agree."""
    on_device = {k: p.to(device) for k, p in pyramids.items()}  # a warm cache lives in memory
    verify_pair(on_device[pairs[0][0]], on_device[pairs[0][1]], *pairs[0], config)  # warm-up
    single, cpu, found = [], [], {}
    for a, b in pairs:
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        found[(a, b)] = verify_pair(on_device[a], on_device[b], a, b, config)
        _sync(device)
        single.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    list(verify_pairs(pairs[:batch_size], on_device.__getitem__, config, device, batch_size))  # warm-up
    per_batch, batched = [], {}
    for start_index in range(0, len(pairs), batch_size):
        chunk = pairs[start_index : start_index + batch_size]
        _sync(device)
        start = time.perf_counter()
        batched.update(verify_pairs(chunk, on_device.__getitem__, config, device, batch_size))
        _sync(device)
        per_batch.append((time.perf_counter() - start) / len(chunk))
    return single, cpu, per_batch, found, batched


def _same(one: list, other: list) -> bool:
    """Same regions up to float rounding (batched matmuls may round differently)."""
    return len(one) == len(other) and all(
        x.n_inliers == y.n_inliers and x.box_a == y.box_a and abs(x.score - y.score) < 1e-4 for x, y in zip(one, other)
    )


def run_pair_timing(args: argparse.Namespace, device: torch.device) -> None:
    load_before = os.getloadavg()[0]
    images = synthetic_collection(args.images, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.cache) if args.cache else Path(tmp)
        start = time.perf_counter()
        pyramids = cached_pyramids(images, args.model, device, root)
        features_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed)
    ordered = [(a.image_id, b.image_id) for a in images for b in images if a.image_id != b.image_id]
    if len(ordered) < args.pairs:
        raise SystemExit(f"--images {args.images} gives only {len(ordered)} ordered pairs; raise it")
    pairs = [ordered[i] for i in rng.choice(len(ordered), args.pairs, replace=False)]
    config = VerifyConfig()
    single, cpu, per_batch, found, batched = time_pairs(pairs, pyramids, config, device, args.batch_size)

    by_id = {im.image_id: im for im in images}
    motif = {p for p in pairs if by_id[p[0]].motifs.keys() & by_id[p[1]].motifs.keys()}
    texture = {p for p in pairs if by_id[p[0]].background == by_id[p[1]].background} - motif
    unrelated = set(pairs) - motif - texture
    hits = {p for p, regions in found.items() if regions and regions[0].score >= args.min_score}
    same = sum(_same(found[p], batched[p]) for p in pairs)
    threads = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device                 {device} ({threads}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"collection             {len(images)} synthetic images, features {features_s:.1f} s (then read from cache)")
    print(f"settings               reference side {FeatureConfig().max_side}, {FeatureConfig().n_scales} scales, "
          f"{config.ransac_iterations} RANSAC hypotheses x {config.n_candidates} candidates")
    print(f"one by one             median {statistics.median(single) * 1e3:.1f} ms per pair "
          f"(p10 {np.percentile(single, 10) * 1e3:.1f}, p90 {np.percentile(single, 90) * 1e3:.1f}, {len(pairs)} pairs)")
    print(f"  CPU time             median {statistics.median(cpu) * 1e3:.1f} ms per pair (all threads summed)")
    print(f"batched ({args.batch_size} / batch)    median {statistics.median(per_batch) * 1e3:.1f} ms per pair "
          f"({len(per_batch)} batches)")
    print(f"same result batched    {same} / {len(pairs)} pairs")
    print(f"verified (S >= {args.min_score})  pairs sharing a motif {len(hits & motif)} / {len(motif)}, "
          f"only a background texture {len(hits & texture)} / {len(texture)}, unrelated {len(hits & unrelated)} / {len(unrelated)}")


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--model", default="effnet-lite0")
    parser.add_argument("--pairs", type=int, default=200, help="ordered pairs to verify (median over these)")
    parser.add_argument("--images", type=int, default=24, help="synthetic images the pairs are drawn from")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per batch in the batched timing")
    parser.add_argument("--min-score", type=float, default=0.02, help="score counted as a verified pair")
    parser.add_argument("--cache", help="feature cache folder to keep between runs (default: temporary)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # A full-pipeline mode (features, shortlist, verification, graph, map over a large
    # synthetic collection) dispatches here on its own flag; the default is per-pair timing.
    run_pair_timing(args, device)


if __name__ == "__main__":
    main()
