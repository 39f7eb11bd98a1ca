"""Discovery speed: milliseconds per verified image pair (paper §4.1-4.2).

    python -m benchmarks.discovery [--device cpu|cuda|auto] [--pairs 200] [--images 24]

Builds a small synthetic collection (skimage photographs and textures as backgrounds,
with a few motifs pasted at random scales and places, so some pairs share a detail),
extracts real EfficientNet-Lite0 pyramids at default settings (reference side 40, 7
scales), stores them in a feature cache and loads them back as float16 (a warm cache:
no feature is computed while timing). Then it verifies ``--pairs`` ordered pairs with
the default :class:`~engine.verify.VerifyConfig` (1,000 RANSAC hypotheses per group),
one by one and in batches, and prints the median milliseconds per pair.

    python -m benchmarks.discovery --before-after [--images 24] [--pairs 40] [--repeats 3] [--folder DIR]

times issue 12's three stages, the code before it against today's, in one process (see
:func:`run_before_after`): features (images/s), verification (ms per pair both ways) and
mining (s per round).

    python -m benchmarks.discovery --synthetic-images 10000 --k 20 [--device ...] [--workdir DIR]

runs the whole discovery instead (features, shortlist, verification, graph, map: the
real ``hitl.discover.run_discovery`` on a fresh project of that many generated JPEGs)
and prints wall time per stage and in total, the process's peak resident memory (and
peak CUDA memory), the feature cache's bytes per image on disk, and how many of the
motif-sharing pairs the shortlist and the links found. Generating the images is not
timed; ``--workdir`` keeps them for the next run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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
    return list(iter_synthetic(n_images, seed, size))


def iter_synthetic(n_images: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> Iterator[SyntheticImage]:
    """The images of :func:`synthetic_collection` one at a time (for collections that do
    not fit in memory: 10k images of 640 x 480 are 9 GB of pixels)."""
    rng = np.random.default_rng(seed)
    width, height = size
    backgrounds = [_skimage(name) for name in _BACKGROUNDS]
    motifs = [_skimage(name)[y0:y1, x0:x1] for name, x0, y0, x1, y1 in _MOTIFS]
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
        yield SyntheticImage(f"syn{i:05d}", canvas.clip(0, 255).astype(np.uint8), background, placed)


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


# ---------------------------------------------------------------- before / after issue 12


def _interleaved(paths: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best CPU seconds of each path over ``repeats`` interleaved rounds (one machine load for all)."""
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(repeats):
        for name, run in paths.items():
            start = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - start)
    return best


def run_before_after(args: argparse.Namespace, device: torch.device) -> None:
    """Issue 12's three stages, the code before it against today's, in one process on one
    synthetic collection (CPU time, best of ``--repeats``, paths interleaved):

    - features: PyTorch float32 NCHW eager (before) against ONNX Runtime float32 (today),
      decoding and resizing included (:func:`benchmarks.detect.time_features`);
    - verification both ways, as discovery runs it at default settings (each pair A->B
      and B->A, each also against the other's mirror image, texture weights computed
      once): the first version's path (``reference=True``) against today's, on
      ``--pairs`` pairs;
    - mining, one round of default :class:`engine.mining.MiningConfig`: candidates searched
      in every image (before issue 10) against the shortlist's neighbours (today).
    """
    from benchmarks.detect import time_features
    from engine.detect import FeatureBank
    from engine.mining import MiningConfig, mine_pairs
    from engine.mirror import flip_pyramid, verify_pairs_mirrored
    from hitl.discover import texture_weights
    from hitl.oneshot import list_images
    from hitl.rounds import RoundConfig, shortlist_neighbours

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            items = list_images(args.folder)[: args.images]
        else:
            folder = Path(tmp) / "images"
            write_synthetic_folder(folder, args.images, args.seed)
            items = sorted((path.stem, path) for path in folder.glob("*.jpg"))
        pyramids, feat = time_features(args.model, items, device, Path(tmp) / "cache", rounds=args.repeats)
    by_id = {image_id: p for (image_id, _), p in zip(items, pyramids)}
    rng = np.random.default_rng(args.seed)
    ids = list(by_id)
    unordered = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
    pairs = [unordered[i] for i in rng.choice(len(unordered), min(args.pairs, len(unordered)), replace=False)]
    both = [p for a, b in pairs for p in ((a, b), (b, a))]
    config = VerifyConfig()
    weights = texture_weights(by_id.__getitem__, config.texture)
    mirrored = {image_id: flip_pyramid(p) for image_id, p in by_id.items()}  # costs what mirror images cost
    for image_id in ids:
        weights(image_id)
    verify = {name: (lambda ref=ref: list(verify_pairs_mirrored(both, by_id.__getitem__, mirrored.__getitem__, config,
                                                                device, get_weights=weights, reference=ref)))
              for name, ref in (("before", True), ("after", False))}
    verify_s = _interleaved(verify, args.repeats)

    bank = FeatureBank.build(ids, [by_id[i] for i in ids])
    k = min(RoundConfig().shortlist_k, len(ids) - 1)
    neighbours = shortlist_neighbours(bank, k)
    mining = {name: (lambda n=n: mine_pairs(bank, args.seed, MiningConfig(), neighbours=n))
              for name, n in (("before", None), ("after", neighbours))}
    mining_s = _interleaved(mining, args.repeats)

    rate = feat["rate"]
    threads = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device            {device} ({threads}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}); "
          f"{len(ids)} {'images of ' + str(args.folder) if args.folder else 'synthetic images'}, CPU time, "
          f"best of {args.repeats}, before and after interleaved")
    print(f"features          {rate['old']:.2f} -> {rate['onnx']:.2f} images/s ({rate['onnx'] / rate['old']:.2f}x); "
          f"per-cell cosine to float32: min {feat['cos']['onnx']['min']:.4f}")
    per_pair = {name: seconds / len(pairs) * 1e3 for name, seconds in verify_s.items()}
    print(f"verification      {per_pair['before']:.1f} -> {per_pair['after']:.1f} ms per pair both ways "
          f"({per_pair['before'] / per_pair['after']:.2f}x; {len(pairs)} pairs)")
    print(f"mining            {mining_s['before']:.2f} -> {mining_s['after']:.2f} s per round "
          f"({mining_s['before'] / mining_s['after']:.2f}x; every image -> {k} shortlist neighbours)")


# ---------------------------------------------------------------- whole discovery at scale


def write_synthetic_folder(folder: Path, n_images: int, seed: int) -> dict[str, frozenset[int]]:
    """Write :func:`iter_synthetic` as JPEGs ``syn00000.jpg``... into ``folder``, one image
    in memory at a time, and return each file stem's motifs. A folder written before
    with the same size and seed is reused (its sidecar ``<folder>.json`` says so)."""
    sidecar = folder.with_suffix(".json")
    wanted = {"n_images": n_images, "seed": seed}
    if sidecar.is_file():
        saved = json.loads(sidecar.read_text())
        if {k: saved.get(k) for k in wanted} == wanted:
            return {stem: frozenset(m) for stem, m in saved["motifs"].items()}
    folder.mkdir(parents=True, exist_ok=True)
    motifs = {}
    for image in iter_synthetic(n_images, seed):
        Image.fromarray(image.rgb).save(folder / f"{image.image_id}.jpg", quality=90)
        motifs[image.image_id] = sorted(image.motifs)
    sidecar.write_text(json.dumps({**wanted, "motifs": motifs}))
    return {stem: frozenset(m) for stem, m in motifs.items()}


def peak_rss_bytes() -> int | None:
    """This process's resident-memory high-water mark (None off Unix). After a
    :class:`PeakRss` reset it may no longer cover the time before the reset."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB, macOS bytes


def current_rss_bytes() -> int | None:
    """Resident memory now, from /proc (None where there is no /proc)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Resident-memory peaks per stage and overall.

    Linux lets a process reset its own high-water mark (``VmHWM``, by writing 5 to
    /proc/self/clear_refs), so each stage gets its own peak: that is what shows how a
    stage's memory grows with N, even when an earlier stage set the process's peak.
    Elsewhere a stage's figure is the process's high-water mark so far.
    """

    def __init__(self):
        self.overall = peak_rss_bytes() or 0
        self.per_stage = self._reset()

    @staticmethod
    def _hwm() -> int | None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return peak_rss_bytes()
        kib = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
        return kib[0] * 1024 if kib else peak_rss_bytes()

    def _reset(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def start(self) -> None:
        """Fold the peak since the last reading into ``overall``; start a stage's peak."""
        self.stop()
        self._reset()

    def stop(self) -> int | None:
        """The peak since :meth:`start` (or since the process began, see the class doc)."""
        peak = self._hwm()
        self.overall = max(self.overall, peak or 0)
        return peak


@dataclass
class StageFigure:
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time, all threads: the cost without the waiting
    peak_rss: int | None = None  # resident-memory peak during the stage (see PeakRss), bytes
    cuda_peak: int = 0  # most CUDA memory allocated during the stage, bytes


# hitl.discover's steps in run order. They are timed by wrapping them in place for one
# run: the run is the real one, only a clock is added around each step.
DISCOVER_STAGES = (
    ("collection_features", "features"),
    ("image_descriptors", "shortlist: descriptors"),
    ("_shortlist", "shortlist: k-NN"),
    ("_verify_and_store", "verification"),
    ("_store_clusters", "graph + clusters"),
    ("_store_maps", "map (UMAP + HDBSCAN)"),
)


def _clocked(step: Callable, figure: StageFigure, memory: PeakRss, device: torch.device) -> Callable:
    @functools.wraps(step)
    def timed(*args, **kwargs):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        memory.start()
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            return step(*args, **kwargs)
        finally:
            _sync(device)
            figure.seconds += time.perf_counter() - start
            figure.cpu_seconds += time.process_time() - start_cpu
            figure.peak_rss = max(figure.peak_rss or 0, memory.stop() or 0) or None
            if device.type == "cuda":
                figure.cuda_peak = max(figure.cuda_peak, torch.cuda.max_memory_allocated())

    return timed


@contextmanager
def timed_stages(module, stages, device: torch.device,
                 memory: PeakRss | None = None) -> Iterator[dict[str, StageFigure]]:
    """Time the named functions of ``module`` while the block runs; restore them after."""
    missing = [name for name, _ in stages if not callable(getattr(module, name, None))]
    if missing:
        raise RuntimeError(f"{module.__name__} has no {', '.join(missing)}: update DISCOVER_STAGES")
    memory = memory or PeakRss()
    figures = {label: StageFigure() for _, label in stages}
    originals = {name: getattr(module, name) for name, _ in stages}
    for name, label in stages:
        setattr(module, name, _clocked(originals[name], figures[label], memory, device))
    try:
        yield figures
    finally:
        for name, step in originals.items():
            setattr(module, name, step)
        memory.stop()


def cache_footprint(features_dir: Path) -> tuple[int, int]:
    """(files, bytes) of the cached pyramids under a project's feature folder."""
    sizes = [p.stat().st_size for p in features_dir.rglob("*.npz")]
    return len(sizes), sum(sizes)


def _pairs_sharing(motifs: dict[str, frozenset[int]]) -> int:
    """Unordered image pairs sharing a motif, counted per group of equal motif sets."""
    groups: dict[frozenset[int], int] = {}
    for m in motifs.values():
        groups[m] = groups.get(m, 0) + 1
    keys = list(groups)
    return sum(groups[a] * (groups[a] - 1) // 2 if i == j else groups[a] * groups[b]
               for i, a in enumerate(keys) for j, b in enumerate(keys) if i <= j and a & b)


def ground_truth_lines(store, model_id: str, motifs: dict[str, frozenset[int]], min_score: float) -> list[str]:
    """Shortlist recall and link precision against the pasted motifs."""
    stem = {img.image_id: Path(img.path).stem for img in store.list_images()}
    shares = lambda a, b: bool(motifs[stem[a]] & motifs[stem[b]])  # noqa: E731
    verified = store.verified_pairs(model_id)
    linked = {tuple(sorted((lk.image_a, lk.image_b))) for lk in store.list_links(model_id=model_id, min_score=min_score)}
    n_true = _pairs_sharing(motifs)
    listed_true = sum(shares(a, b) for a, b in verified)
    linked_true = sum(shares(a, b) for a, b in linked)
    return [
        f"shortlist              {listed_true} / {n_true} motif-sharing pairs ({listed_true / max(n_true, 1):.1%}); "
        f"{len(verified) - listed_true} of its {len(verified)} pairs share none",
        f"linked (S >= {min_score})      {len(linked)} pairs: {linked_true} share a motif "
        f"(precision {linked_true / max(len(linked), 1):.1%}, {linked_true / max(listed_true, 1):.1%} of those shortlisted)",
    ]


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MB"


@dataclass
class ScaleRun:
    """What one whole-discovery run measured (see :func:`run_scale`)."""

    report: object  # hitl.discover.DiscoverReport
    threads: int  # torch CPU threads when the run began (a step may change them)
    stages: dict[str, StageFigure]
    memory: PeakRss
    ingest_s: float
    cpu_s: float  # process CPU time of the whole run_discovery call, all threads
    rss_before: tuple[int | None, int | None]  # (now, high-water) before ingest, bytes
    cache: tuple[int, int]  # (files, bytes) of the feature cache
    truth_lines: list[str]


def print_scale_figures(args: argparse.Namespace, device: torch.device, run: ScaleRun) -> None:
    report, stages, memory = run.report, run.stages, run.memory
    name = f"{torch.cuda.get_device_name()}, " if device.type == "cuda" else ""
    print(f"device                 {device} ({name}{run.threads} CPU thread{'s' if run.threads != 1 else ''}; load average {os.getloadavg()[0]:.1f})")
    print(f"collection             {report.n_images} synthetic images (640 x 480 JPEG); "
          f"ingest {run.ingest_s:.1f} s (not in the total)")
    print(f"memory before run      RSS {_mb(run.rss_before[0])} now, high-water {_mb(run.rss_before[1])} "
          "(interpreter, torch, generator)")
    rss_title = "peak RSS" if memory.per_stage else "RSS high-water so far"
    print(f"{'stage':<24}{'wall s':>9}{'share':>7}{'CPU s':>9}{rss_title:>22}"
          + ("   CUDA peak" if device.type == "cuda" else ""))
    for label, fig in stages.items():
        cuda = f"   {_mb(fig.cuda_peak)}" if device.type == "cuda" else ""
        print(f"  {label:<22}{fig.seconds:9.1f}{fig.seconds / report.seconds:7.1%}{fig.cpu_seconds:9.1f}"
              f"{_mb(fig.peak_rss):>22}{cuda}")
    other = report.seconds - sum(f.seconds for f in stages.values())
    print(f"  {'other (model, store)':<22}{other:9.1f}{other / report.seconds:7.1%}")
    print(f"total                  {report.seconds:.1f} s = {report.seconds / 60:.1f} min "
          f"({report.seconds / max(report.n_images, 1) * 1e3:.0f} ms per image); CPU {run.cpu_s:.1f} s")
    verify_s = stages["verification"].seconds
    print(f"pairs (knn, k={args.k})      {report.n_pairs} shortlisted, {report.n_verified_now} verified: "
          f"{verify_s / max(report.n_verified_now, 1) * 1e3:.1f} ms wall, "
          f"{stages['verification'].cpu_seconds / max(report.n_verified_now, 1) * 1e3:.1f} ms CPU per pair "
          "(as run_discovery verifies it, store writes included)")
    print(f"found                  {report.n_links} links with S >= {args.min_score}, {report.n_clusters} clusters"
          + (f", {len(report.failures)} unreadable images" if report.failures else ""))
    files, size = run.cache
    print(f"feature cache          {size / max(files, 1) / 1e6:.3f} MB per image on disk ({files} files, "
          f"{size / 1e9:.2f} GB)")
    print(f"peak RSS               {_mb(memory.overall)} (whole process, ingest included)" + (
        f", CUDA peak {_mb(max(f.cuda_peak for f in stages.values()))}" if device.type == "cuda" else ""))
    for line in run.truth_lines:
        print(line)


def run_scale(args: argparse.Namespace, device: torch.device) -> None:
    """The whole discovery (``hitl.discover.run_discovery``) on a fresh project of
    ``--synthetic-images`` generated JPEGs; generating them is not timed."""
    import hitl.discover as discover
    from hitl.ingest import ingest_paths
    from hitl.project import open_project

    if args.synthetic_images < 2:
        raise SystemExit(f"--synthetic-images must be at least 2, got {args.synthetic_images}")
    work = Path(args.workdir) if args.workdir else None
    if work:
        work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        folder = (work or Path(tmp)) / f"synthetic-{args.synthetic_images}-{args.seed}"
        start = time.perf_counter()
        motifs = write_synthetic_folder(folder, args.synthetic_images, args.seed)
        print(f"generated              {folder} in {time.perf_counter() - start:.0f} s (not timed below)", flush=True)
        store, paths = open_project(Path(tmp) / "artminer.duckdb", create=True)
        rss_before = (current_rss_bytes(), peak_rss_bytes())
        start = time.perf_counter()
        ingest_paths(store, [folder], progress=False)
        ingest_s = time.perf_counter() - start
        config = discover.DiscoverConfig(k=args.k, min_score=args.min_score)
        memory, start_cpu, threads = PeakRss(), time.process_time(), torch.get_num_threads()
        with timed_stages(discover, DISCOVER_STAGES, device, memory) as stages:
            report = discover.run_discovery(store, paths, config, model=args.model, device=str(device),
                                            progress=not args.quiet)
        cpu_s = time.process_time() - start_cpu
        truth = ground_truth_lines(store, report.model_id, motifs, args.min_score)
        run = ScaleRun(report, threads, stages, memory, ingest_s, cpu_s, rss_before,
                       cache_footprint(paths.features), truth)
        store.close()
    print_scale_figures(args, device, run)


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
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; on a busy "
                        "shared machine 1 avoids OpenMP threads spin-waiting for each other, 5-10x slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before-after", action="store_true",
                        help="issue 12's stages, the code before it against today's (features, verification, mining)")
    parser.add_argument("--repeats", type=int, default=3, help="with --before-after: interleaved rounds (best of)")
    parser.add_argument("--folder", help="with --before-after: the first --images images of this folder "
                        "(e.g. a demo's images/) instead of synthetic ones")
    scale = parser.add_argument_group("whole discovery at scale")
    scale.add_argument("--synthetic-images", type=int, metavar="N",
                       help="run the whole discovery on N generated images instead of timing pairs")
    scale.add_argument("--k", type=int, default=20, help="shortlist neighbours per image")
    scale.add_argument("--workdir", help="folder for the images (kept and reused) and the run's project "
                       "(removed after); default: temporary")
    scale.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.before_after:
        run_before_after(args, device)
    elif args.synthetic_images is not None:
        run_scale(args, device)
    else:
        run_pair_timing(args, device)


if __name__ == "__main__":
    main()
