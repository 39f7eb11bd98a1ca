"""Feature extraction and one-shot detection: before/after issue 12, exact vs indexed.

    python -m benchmarks.detect [--device cpu|cuda] [--images DIR] [--bank-size 1000 --bank-size 10000 ...]

1. Features: the pyramids of ``--feature-images`` images of the folder (default: a fresh
   demo collection) with the old path (PyTorch float32, NCHW, eager: before issue 12),
   session 4's (channels-last, bf16 autocast with the float32 modules) and today's
   (float32 through ONNX Runtime, :mod:`engine.onnx_trunk`), interleaved: images/s of
   each (from CPU time on the CPU: the machine is shared), and the per-cell cosine of
   each to the old path; then the cache's load rate and size.
2. Detection over banks of ``--bank-size`` images. The folder's images are real; above
   their number, the bank is filled with *synthetic* images (``--synthetic``): ``mix``,
   each the per-cell normalised mix of two real pyramids (``a + w b``, w in [0.3, 1)):
   real feature statistics and hard distractors for the index (a mix of an image holding
   the motif still holds it, weaker), but at 100,000 images each real image has ~1,700
   near-duplicates; ``collage``, each a 3 x 3 grid of tiles of real images at random
   offsets: no near-duplicate images, tiles that hold a motif now and then. Queries are the annotation file's query
   boxes (the demo's ground truth) when there is one. Per bank size:

   - exact: the dense scan of every image (:func:`engine.detect.detect`) over a float32
     bank, streamed in chunks of ``--chunk`` images so 10,000 images fit in RAM; above
     ``--exact-max`` images it is not run (reported as extrapolated from the per-image
     cost). At the first size also the old path: a float16 bank converted per query.
     ``--exact-queries`` runs it on the first few queries only (at 100,000 images one
     exact query is ~3 min of CPU); recall is then measured on those queries;
   - indexed: region index (:mod:`engine.ann_index`) search, then the dense scan of the
     ``--candidates`` images it returns. Their pyramids are synthesised, not read, so the
     cache reads a project would do are added from the measured cache load rate;
   - recall: the share of the exact scan's top-10 images among the indexed top-10, and
     how often the top-1 detection (image and box) is the same; then both again counting
     an indexed image that scores as high as the exact 10th (ties: a collage bank copies
     one real tile into thousands of images at 100,000, see :class:`Agreement`);
   - index: build time, regions, bytes per image.

Prints medians over the queries. Synthetic figures are marked as such.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import engine.features as features
from engine.ann_index import AnnConfig, RegionIndex
from engine.backbone import create_backbone, resolve_device
from engine.detect import DetectConfig, FeatureBank, detect, query_features
from engine.features import FeatureConfig, FeaturePyramid, collection_features, read_stored_npz
from engine.images import content_hash, load_rgb
from engine.types import Box, Detection
from hitl.oneshot import list_images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:.0f} ms" if values else "-"


# ---------------------------------------------------------------- features, before and after


FEATURE_PATHS = ("old", "eager", "onnx")


@contextlib.contextmanager
def feature_path(name: str):
    """The module switches of one feature path (:data:`FEATURE_PATHS`): ``old`` (PyTorch
    float32, NCHW, eager: before issue 12), ``eager`` (PyTorch channels-last, bf16 autocast
    with the float32 modules: session 4), ``onnx`` (float32 through ONNX Runtime: today)."""
    if name not in FEATURE_PATHS:
        raise ValueError(f"feature path must be one of {FEATURE_PATHS}, got {name!r}")
    saved = (features.CHANNELS_LAST, features.ONNX_RUNTIME, os.environ.get("ARTMINER_PRECISION"))
    features.CHANNELS_LAST = name != "old"
    features.ONNX_RUNTIME = name == "onnx"
    os.environ["ARTMINER_PRECISION"] = "bf16" if name == "eager" else "fp32"
    try:
        yield
    finally:
        features.CHANNELS_LAST, features.ONNX_RUNTIME = saved[:2]
        if saved[2] is None:
            os.environ.pop("ARTMINER_PRECISION", None)
        else:
            os.environ["ARTMINER_PRECISION"] = saved[2]


def _cosines(reference: list[FeaturePyramid], other: list[FeaturePyramid]) -> torch.Tensor:
    return torch.cat([(a.float() * b.float()).sum(0).flatten() for p, q in zip(reference, other)
                      for a, b in zip(p.levels, q.levels)])


def _np_load_levels(path: Path) -> list[torch.Tensor]:
    """A cached pyramid's levels as the cache read them before session 9 (np.load's zip streams)."""
    with np.load(path) as blob:
        return [torch.from_numpy(blob[f"level{k}"]) for k in range(int(blob["n_levels"]))]


def time_features(model: str, items, device: torch.device, cache: Path,
                  rounds: int = 3) -> tuple[list[FeaturePyramid], dict]:
    """The paths of :func:`feature_path` on the same images, interleaved ``rounds`` times
    (best of each, so that all see the same machine load); today's pyramids are cached."""
    config = FeatureConfig()
    nets, built = {}, {}
    for name in FEATURE_PATHS:
        with feature_path(name):
            nets[name] = create_backbone(model).to(device)
            start = time.perf_counter()  # for the ONNX path: export and session
            features.embed_cells(nets[name], torch.rand(1, 3, 64, 64), (2, 2))
            built[name] = time.perf_counter() - start
    # CPU time on the CPU: on this shared machine the wall time of a one-thread run mostly
    # measures the other processes (GPU: wall time)
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    best, got = dict.fromkeys(nets, float("inf")), {}
    for _ in range(rounds):
        for name, net in nets.items():
            with feature_path(name):
                _sync(device)
                start = clock()
                got[name] = collection_features(net, items, config, None, progress=False).pyramids
                _sync(device)
                best[name] = min(best[name], clock() - start)
    with feature_path("onnx"):
        after = collection_features(nets["onnx"], items, config, cache, progress=False)
        # Reads as a project does them: content hashes known (the store holds them), at
        # least 200 reads so that a few images still give a stable rate.
        hashes = {image_id: content_hash(path) for image_id, path in items}
        reads = max(1, -(-200 // len(items)))
        start = time.perf_counter()
        for _ in range(reads):
            collection_features(nets["onnx"], items, config, cache, progress=False, hashes=hashes)
        load_s = (time.perf_counter() - start) / reads
    n = len(after.pyramids)
    files = sorted(cache.rglob("*.npz")) * reads
    readers = {"np.load": lambda: [_np_load_levels(f) for f in files],
               "one read": lambda: [read_stored_npz(f) for f in files]}
    best_read = dict.fromkeys(readers, float("inf"))
    for _ in range(3):  # interleaved, best of 3 (wall time: reading is what is timed)
        for name, run in readers.items():
            start = time.perf_counter()
            run()
            best_read[name] = min(best_read[name], time.perf_counter() - start)
    cos = {name: _cosines(got["old"], got[name]) for name in FEATURE_PATHS[1:]}
    figures = {
        "n": n, "rate": {name: n / seconds for name, seconds in best.items()}, "built": built["onnx"], "load": n / load_s,
        "cos": {name: {"mean": float(c.mean()), "min": float(c.min()), "p001": float(c.quantile(0.001)),
                       "p01": float(c.quantile(0.01)), "below": float((c < 0.995).float().mean())}
                for name, c in cos.items()},
        "readers": {name: len(files) / seconds for name, seconds in best_read.items()},
        "precision": features.autocast_dtype(nets["onnx"], device),
        "cache_mb": sum(p.stat().st_size for p in cache.rglob("*.npz")) / n / 1e6,
    }
    return after.pyramids, figures


# ---------------------------------------------------------------- synthetic bank


SYNTHETIC = ("mix", "collage")
COLLAGE_GRID = 3  # a collage's tiles per side


class SyntheticBank:
    """Pyramids of ``n`` images: the real ones first, then deterministic synthetic ones.

    ``kind`` "mix": each the per-cell mix of two real pyramids of one shape (every real
    image has ~n / len(real) near-duplicates in the bank). "collage": each a 3 x 3 grid of
    tiles, a tile copied (at every level, at the same relative place) from a random real
    image of the same shape at a random offset, so that no two images are near-duplicates
    while a tile can still hold a whole or part of a motif, as repeats do in a collection;
    its regions are pooled from its cells, as a project pools them.
    """

    def __init__(self, real: list[FeaturePyramid], n: int, kind: str = "mix", ann: AnnConfig = AnnConfig()):
        if kind not in SYNTHETIC:
            raise ValueError(f"synthetic images must be one of {SYNTHETIC}, not {kind!r}")
        self.real = [FeaturePyramid(tuple(t.float() for t in p.levels), p.image_size) for p in real]
        self.n = n
        self.kind = kind
        self.pooled = kind == "collage"
        # b is drawn among images of a's shape (no resampling: ~1 ms per synthetic image)
        shapes: dict[tuple, list[int]] = {}
        for i, p in enumerate(real):
            shapes.setdefault(tuple(t.shape for t in p.levels), []).append(i)
        self.same_shape = [shapes[tuple(t.shape for t in p.levels)] for p in real]
        self.use(ann)

    def use(self, ann: AnnConfig) -> None:
        """Describe regions as ``ann`` says (window, stride, blocks)."""
        self.ann = ann
        self.regions_of = [self._describe(p) for p in self.real]
        self.mirror_regions_of = [self._describe(FeaturePyramid(tuple(t.flip(2) for t in p.levels), p.image_size))
                                  for p in self.real]

    def _describe(self, pyramid: FeaturePyramid) -> torch.Tensor:
        return self.ann.regions(pyramid)

    def _draw(self, index: int) -> tuple[int, int, float, bool]:
        rng = np.random.default_rng(index)
        a = int(rng.integers(len(self.real)))
        b = int(rng.choice(self.same_shape[a]))
        return a, b, float(rng.uniform(0.3, 1.0)), b == a  # alone in its shape: mixed with its mirror

    def _collage(self, index: int) -> FeaturePyramid:
        rng = np.random.default_rng(index)
        a = int(rng.integers(len(self.real)))
        shape_of = self.real[a]
        sources = rng.choice(self.same_shape[a], size=COLLAGE_GRID**2)
        offsets = rng.random((COLLAGE_GRID**2, 2))
        levels = []
        for lv, template in enumerate(shape_of.levels):
            c, h, w = template.shape
            out = torch.empty(c, h, w)
            rows = [h * g // COLLAGE_GRID for g in range(COLLAGE_GRID + 1)]
            cols = [w * g // COLLAGE_GRID for g in range(COLLAGE_GRID + 1)]
            for t, (source, (ry, rx)) in enumerate(zip(sources, offsets)):
                gy, gx = divmod(t, COLLAGE_GRID)
                th, tw = rows[gy + 1] - rows[gy], cols[gx + 1] - cols[gx]
                y, x = int(ry * (h - th + 1)), int(rx * (w - tw + 1))
                out[:, rows[gy] : rows[gy + 1], cols[gx] : cols[gx + 1]] = \
                    self.real[int(source)].levels[lv][:, y : y + th, x : x + tw]
            levels.append(out)
        return FeaturePyramid(tuple(levels), shape_of.image_size)

    def __call__(self, index: int) -> FeaturePyramid:
        if index < len(self.real):
            return self.real[index]
        if self.kind == "collage":
            return self._collage(index)
        a, b, w, flip = self._draw(index)
        levels = tuple(F.normalize(la + w * (lb.flip(2) if flip else lb), dim=0)
                       for la, lb in zip(self.real[a].levels, self.real[b].levels))
        return FeaturePyramid(levels, self.real[a].image_size)

    def regions(self, index: int) -> torch.Tensor:
        """Region descriptors: a real image's own; a synthetic image's mixed at the descriptor
        level, normalize(r_a + w r_b) (its cells are mixed cell by cell: close, not equal),
        or with ``pooled`` pooled from its mixed cells, as a project computes them."""
        if index < len(self.real):
            return self.regions_of[index]
        if self.pooled:
            return self._describe(self(index))
        a, b, w, flip = self._draw(index)
        other = self.mirror_regions_of[a] if flip else self.regions_of[b]
        return F.normalize(self.regions_of[a] + w * other, dim=1)

    def ids(self) -> list[str]:
        return [str(i) for i in range(self.n)]


def exact_scan(queries, bank: SyntheticBank, config: DetectConfig, chunk: int,
               device) -> tuple[list[list[Detection]], list[float], list[float]]:
    """The dense scan of every image for every query; a chunk's bank is built once (not timed)."""
    results: list[list[Detection]] = [[] for _ in queries]
    seconds, cpu = [0.0] * len(queries), [0.0] * len(queries)
    for start in range(0, bank.n, chunk):
        ids = list(range(start, min(bank.n, start + chunk)))
        sub = FeatureBank.build([str(i) for i in ids], [bank(i) for i in ids], device=device, dtype=torch.float32)
        for q, (query, exclude) in enumerate(queries):
            _sync(device)
            t, c = time.perf_counter(), time.process_time()
            results[q] += detect(query, sub, config, exclude=exclude)
            _sync(device)
            seconds[q] += time.perf_counter() - t
            cpu[q] += time.process_time() - c
    merged = [sorted(r, key=lambda d: -d.score)[: config.top_k] for r in results]
    return merged, seconds, cpu


def _old_window_scores(level: torch.Tensor, valid: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """engine.detect.window_scores before issue 12: float16 chunks converted per call, a convolution."""
    qh, qw = query.shape[1:]
    compute = torch.float32 if level.device.type == "cpu" else level.dtype
    scores = F.conv2d(level.to(compute), query[None].to(compute))[:, 0].float() / (qh * qw)
    rows = torch.arange(scores.shape[1], device=scores.device)
    cols = torch.arange(scores.shape[2], device=scores.device)
    inside = (rows[None, :, None] <= (valid[:, 0] - qh)[:, None, None]) & (
        cols[None, None, :] <= (valid[:, 1] - qw)[:, None, None])
    return scores.masked_fill(~inside, float("-inf"))


def old_exact_scan(queries, real: list[FeaturePyramid], n: int, config: DetectConfig, device) -> list[float]:
    """The old path over ``n`` images: a float16 bank converted inside every query, convolved."""
    import engine.detect

    bank = SyntheticBank(real, n)
    half = FeatureBank.build(bank.ids(), [bank(i) for i in range(n)], device=device, dtype=torch.float16)
    seconds = []
    new_scores, engine.detect.window_scores = engine.detect.window_scores, _old_window_scores
    try:
        for query, exclude in queries:
            fresh = FeatureBank(half.image_ids, half.levels, half.valid, half.sizes)
            fresh._compute = half.levels  # the old code matched the float16 levels as they were
            t = time.perf_counter()
            detect(query, fresh, config, exclude=exclude)
            seconds.append(time.perf_counter() - t)
    finally:
        engine.detect.window_scores = new_scores
    return seconds


def build_index(bank: SyntheticBank, config: AnnConfig) -> tuple[RegionIndex, float]:
    """The region index of the bank, as a project builds it: trained on the first 2,000
    images, the rest added a chunk at a time (100,000 images' regions never sit in memory)."""
    start = time.perf_counter()
    index = RegionIndex.build_streamed(bank.ids(), lambda image_id: bank.regions(int(image_id)), config)
    return index, time.perf_counter() - start


def indexed_scan(queries, index: RegionIndex, bank: SyntheticBank, config: DetectConfig, candidates: int,
                 device) -> tuple[list[list[Detection]], list[float], list[float], list[float]]:
    results, search_s, dense_s, cpu_s = [], [], [], []
    for query, exclude in queries:
        t, c = time.perf_counter(), time.process_time()
        hits = index.search_query(query, candidates)
        search_s.append(time.perf_counter() - t)
        cpu = time.process_time() - c
        pyramids = [bank(int(i)) for i, _ in hits]  # a project reads these from its cache (added below)
        t, c = time.perf_counter(), time.process_time()
        sub = FeatureBank.build([i for i, _ in hits], pyramids, device=device, dtype=torch.float32)
        results.append(detect(query, sub, config, exclude=exclude))
        _sync(device)
        dense_s.append(time.perf_counter() - t)
        cpu_s.append(cpu + time.process_time() - c)
    return results, search_s, dense_s, cpu_s


def _best_scores(dets: list[Detection]) -> dict[str, float]:
    """Each image's best detection score, in rank order."""
    best: dict[str, float] = {}
    for d in dets:
        best.setdefault(d.image_id, d.score)
    return best


def _top_images(dets: list[Detection], k: int = 10) -> list[str]:
    return list(_best_scores(dets))[:k]


TIE = 1e-4  # scores this close are one score: the same cells, summed in another order


@dataclass(frozen=True)
class Agreement:
    """How the indexed search's top-10 images compare with the exact scan's (means over queries).

    ``recall`` is the share of the exact top-10 images among the indexed top-10. When a
    bank holds the same cells in many images (a collage's tile copied from a real image),
    many images tie with the exact 10th and which of them the exact scan lists is an
    accident of order; ``recall_ties`` also counts an indexed image whose exact score
    reaches the exact 10th's (the indexed scan scores its candidates exactly), so it is
    what a user would see: no better image was left out. ``tied`` is the number of images
    within ``TIE`` of the exact 10th among the exact scan's detections (a lower bound).
    """

    recall: float
    recall_ties: float
    top1: float  # the same top-1 detection: image and box (IoU > 0.9)
    top1_ties: float  # or a top-1 that scores as high
    tied: float


def agreement(exact: list[list[Detection]], indexed: list[list[Detection]]) -> Agreement:
    recalls, with_ties, same, same_ties, tied = [], [], [], [], []
    for e, i in zip(exact, indexed):
        top, found = _top_images(e), _best_scores(i)
        tenth = _best_scores(e)[top[-1]] if top else float("inf")
        recalls.append(len(set(top) & set(list(found)[:10])) / max(1, len(top)))
        with_ties.append(min(len(top), sum(s >= tenth - TIE for s in list(found.values())[:10])) / max(1, len(top)))
        same.append(bool(e and i and e[0].image_id == i[0].image_id and e[0].box.iou(i[0].box) > 0.9))
        same_ties.append(bool(e and i and i[0].score >= e[0].score - TIE))
        tied.append(sum(abs(s - tenth) <= TIE for s in _best_scores(e).values()))
    return Agreement(*(float(np.mean(v)) for v in (recalls, with_ties, same, same_ties, tied)))


# ---------------------------------------------------------------- main


def load_queries(backbone, folder: Path, annotations: Path | None, n: int, ids: list[str],
                 device) -> tuple[list[tuple[torch.Tensor, tuple[str, Box]]], list[float]]:
    """(query features, (own image id, box)) for ``n`` queries, and the seconds each took to embed."""
    boxes: list[tuple[str, Box]] = []
    if annotations and annotations.is_file():
        from engine.evaluate import load_annotations

        boxes = [(q.query.image, q.query.box) for q in load_annotations(annotations)]
    if not boxes:
        for image_id in ids:
            w, h = load_rgb(folder / image_id).shape[1::-1]
            boxes.append((image_id, Box(w * 0.25, h * 0.25, w * 0.6, h * 0.65)))
    step = max(1, len(boxes) // n)
    out, seconds = [], []
    for image_id, box in boxes[::step][:n]:
        rgb = load_rgb(folder / image_id)
        t = time.perf_counter()
        query = query_features(backbone, rgb, box)
        seconds.append(time.perf_counter() - t)
        out.append((query.to(device), (str(ids.index(image_id)), box)))
    return out, seconds


def print_features(feat: dict, device: torch.device) -> None:
    threads = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device                      {device} ({threads}), native bf16: {features.cpu_has_native_bf16()}, "
          f"features in {feat['precision'] or 'float32'}")
    rate, cos = feat["rate"], feat["cos"]
    clock = "CPU time" if device.type == "cpu" else "wall time"
    print(f"features, {feat['n']} images  interleaved, best of 3, {clock} (images/s; per-cell cosine to the old path: min, "
          f"0.1st / 1st percentile, share below 0.995)")
    for name, label in (("old", "old: float32 NCHW eager"), ("eager", "session 4: bf16 autocast"),
                        ("onnx", "today: ONNX Runtime fp32")):
        c = cos.get(name)
        agree = (f"; cosine min {c['min']:.4f}, {c['p001']:.4f} / {c['p01']:.4f}, {c['below']:.2%} below"
                 if c else "")
        print(f"  {label:<26}{rate[name]:.2f} images/s ({rate[name] / rate['old']:.2f}x){agree}")
    print(f"ONNX session built in       {feat['built']:.1f} s (once per process and model weights)")
    print(f"feature load from cache     {feat['load']:.1f} images/s; {feat['cache_mb']:.3f} MB per image on disk")
    readers = feat["readers"]
    print(f"cache file reads            {readers['one read']:.0f} pyramids/s in one read (today) against "
          f"{readers['np.load']:.0f}/s through np.load ({readers['one read'] / readers['np.load']:.2f}x; best of 3)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="effnet-lite0")
    parser.add_argument("--images", help="folder of images (default: a fresh demo collection)")
    parser.add_argument("--annotations", help="query boxes (default: ground_truth.json beside the folder)")
    parser.add_argument("--bank-size", type=int, action="append", help="images in the bank (repeat; default 1000)")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--feature-images", type=int, default=20, help="images timed for features before/after")
    parser.add_argument("--candidates", type=int, action="append",
                        help=f"images the dense scan re-scores (repeat to compare; default {AnnConfig().candidates})")
    parser.add_argument("--nprobe", type=int, action="append",
                        help=f"IVF cells visited per query (repeat to compare; default {AnnConfig().nprobe})")
    parser.add_argument("--exact-max", type=int, default=10_000, help="largest bank the exact scan runs over")
    parser.add_argument("--chunk", type=int, default=1000, help="images per exact-scan bank chunk")
    parser.add_argument("--blocks", action="append", type=int,
                        help=f"sub-windows per region side (repeat to compare; default {AnnConfig().blocks})")
    parser.add_argument("--pq-dims", action="append", type=int,
                        help=f"dimensions per PQ sub-quantizer (repeat to compare; default {AnnConfig().pq_dims})")
    parser.add_argument("--stride", action="append", type=int,
                        help=f"cells between region windows (repeat to compare; default {AnnConfig().stride})")
    parser.add_argument("--flat", action="store_true",
                        help="also search a flat (exact) index of the same regions: the descriptors' own ceiling")
    parser.add_argument("--regions", action="append", choices=["mixed", "pooled"],
                        help="synthetic images' region descriptors: mixed at the descriptor level (default, fast) "
                             "or pooled from their mixed cells as a project pools them (repeat to compare)")
    parser.add_argument("--synthetic", choices=SYNTHETIC, default="mix",
                        help="synthetic images above the real ones: per-cell mixes of two real images (many "
                             "near-duplicates at large sizes) or collages of tiles of real images (distinct)")
    parser.add_argument("--features-only", action="store_true", help="only part 1 (features), no detection")
    parser.add_argument("--exact-queries", type=int, action="append",
                        help="queries the exact scan runs, per bank size in order (default: all; recall is "
                             "measured on these)")
    args = parser.parse_args(argv)
    if args.synthetic == "collage" and "mixed" in (args.regions or []):
        parser.error("collages' regions are pooled from their cells: --regions mixed is for --synthetic mix")
    sizes = args.bank_size or [1000]
    wall_start = time.perf_counter()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.images) if args.images else _demo_images(Path(tmp))
        annotations = Path(args.annotations) if args.annotations else folder.parent / "ground_truth.json"
        items = list_images(folder)
        timed = items[: args.feature_images]
        _, feat = time_features(args.model, timed, device, Path(tmp) / "cache")
        if args.features_only:
            print_features(feat, device)
            return
        backbone = create_backbone(args.model).to(device)
        real = collection_features(backbone, items, FeatureConfig(), Path(tmp) / "cache", progress=False).pyramids
    ids = [image_id for image_id, _ in items]
    queries, query_s = load_queries(backbone, folder, annotations, args.queries, ids, device)
    config = DetectConfig()

    print_features(feat, device)
    print(f"query features              median {_median_ms(query_s)} ({len(queries)} queries, {len(real)} real images)")
    candidate_counts = args.candidates or [AnnConfig().candidates]
    nprobes = args.nprobe or [AnnConfig().nprobe]
    per_image = float("nan")  # exact-scan seconds per image, from the first size
    exact_queries = dict(zip(sizes, args.exact_queries or []))
    for n in sizes:
        bank = SyntheticBank(real, n, args.synthetic)
        tag = "" if n <= len(real) else f" ({n - len(real)} synthetic: {args.synthetic})"
        print(f"--- bank of {n} images{tag}")
        runs = {}
        for regions, blocks, pq_dims, stride, flat in itertools.product(
                args.regions or (["pooled"] if args.synthetic == "collage" else ["mixed"]), args.blocks or [AnnConfig().blocks],
                args.pq_dims or [AnnConfig().pq_dims], args.stride or [AnnConfig().stride], [False, True] if args.flat else [False]):
            if flat and pq_dims != (args.pq_dims or [AnnConfig().pq_dims])[0]:
                continue  # a flat index has no PQ: one run covers every --pq-dims
            bank.pooled = regions == "pooled"
            bank.use(replace(AnnConfig(), blocks=blocks, pq_dims=pq_dims, stride=stride,
                             flat_below=2**62 if flat else AnnConfig().flat_below))
            index, build_s = build_index(bank, bank.ann)
            kind = "flat (--flat)" if flat else "flat (too few regions to train)" if index.is_flat else f"IVF-PQ {pq_dims} dims"
            label = f"{regions} regions, {blocks}x{blocks} blocks, stride {stride}, {kind}"
            print(f"index, {label}: {index.n_regions / n:.0f} regions and {index.nbytes() / n / 1e3:.2f} kB per image, "
                  f"built in {build_s:.1f} s")
            for nprobe in nprobes if not index.is_flat else nprobes[:1]:
                index.config = replace(index.config, nprobe=nprobe)
                for count in candidate_counts:
                    runs[label, nprobe, count] = indexed, search_s, dense_s, cpu_s = indexed_scan(
                        queries, index, bank, config, count, device)
                    print(f"indexed query, {count:>4} cand.  search {_median_ms(search_s)} (nprobe {nprobe}) + dense "
                          f"scan {_median_ms(dense_s)} + cache reads ~{count / feat['load'] * 1e3:.0f} ms (at "
                          f"{feat['load']:.0f} images/s); CPU time of search + scan {_median_ms(cpu_s)}")
        if n == sizes[0] and n <= min(args.exact_max, 1000):  # the old path holds the whole bank in memory
            print(f"exact query, old path       median {_median_ms(old_exact_scan(queries[:2], real, n, config, device))} "
                  "(2 queries; float16 bank converted per query, convolution)")
        if n <= args.exact_max:
            few = queries[: exact_queries.get(n, len(queries))]
            exact, exact_s, exact_cpu = exact_scan(few, bank, config, args.chunk, device)
            print(f"exact query                 median {_median_ms(exact_s)} (dense scan of {n}, {len(few)} queries); "
                  f"CPU time {_median_ms(exact_cpu)}")
            per_image = per_image if per_image == per_image else statistics.median(exact_s) / n
            for (label, nprobe, count), (indexed, *_) in runs.items():
                a = agreement(exact, indexed)
                print(f"indexed vs exact, {count:>4} c.  recall of the exact top-10 images {a.recall:.3f}, top-1 same "
                      f"{a.top1:.2f}; counting ties with the exact 10th: {a.recall_ties:.3f}, top-1 as high "
                      f"{a.top1_ties:.2f} (~{a.tied:.1f} images tie with the 10th; {label}, nprobe {nprobe}, "
                      f"{len(few)} queries)")
        elif per_image == per_image:
            print(f"exact query                 ~{per_image * n:.0f} s extrapolated ({per_image * 1e3:.2f} ms per image); "
                  "recall not measured")
        else:
            print("exact query                 not run (--exact-max); recall not measured")
    print(f"this process                {time.process_time():.0f} s CPU in {time.perf_counter() - wall_start:.0f} s wall "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def _demo_images(tmp: Path) -> Path:
    from hitl.demo import build_demo

    build_demo(tmp / "demo", progress=False)
    return tmp / "demo" / "images"


if __name__ == "__main__":
    main()
