"""Candidate images for a one-shot query: an approximate-nearest-neighbour index over
regional descriptors (issue 12, first stage of two-stage detection).

The dense scan of :mod:`engine.detect` slides the query over every level of every
image: exact, but linear in the collection (~18 min over 100,000 images on 2 cores).
Here every image is summarised once by *regions the size of a query*:

1. every pyramid level is cut into windows of ``window`` x ``window`` cells
   (``DetectConfig.query_side`` = 8, so a region covers what a query window covers),
   ``stride`` cells apart: ~100 regions per image at the paper's pyramid (40 ... 10
   cells). A region is described by the means of its ``blocks`` x ``blocks``
   sub-windows, each L2-normalised, concatenated;
2. a query is described the same way from its own cells. For a true copy the query's
   cells equal the window's cells one by one, so the two descriptors agree; the dense
   score (mean of per-cell cosines) can only be high where this blocked cosine is high
   too;
3. the regions go into a FAISS index; a query fetches its nearest regions and keeps the
   images they belong to, best first, until ``candidates`` images; the dense scan then
   runs on those images only.

Why IVF-PQ, not HNSW: the index must hold ~100 regions for each of 100,000-1,000,000
images in RAM. IVF-PQ stores a region in ~64 bytes (56 B of 4-bit codes for 2 x 2 blocks
of 112 channels + an 8 B id), HNSW keeps
the full float vector plus ~2 x 32 graph links (~0.7 KB per region, ~9 GB at 100,000
images). IVF also adds new images to its trained cells without any rebuild, which is
what incremental ingest needs; exactness is restored by the dense re-scoring. Below
``flat_below`` regions a collection is too small to train IVF-PQ (k-means wants ~39
points per centroid): an exact flat inner-product index is used, same interface.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.detect import DetectConfig, FeatureBank, detect
from engine.features import FeaturePyramid
from engine.types import Box, Detection


@dataclass(frozen=True)
class AnnConfig:
    window: int = 8  # region side in cells: DetectConfig.query_side (paper §5.2: 8)
    stride: int = 4  # half a window: a detail anywhere is at most 2 cells off a region
    # Images the dense scan re-scores. benchmarks.detect at 10,000 images (6 queries): recall of the
    # exact top-10 images 0.88-0.92 with 100, 1.000 with 150, ~0.65 s of CPU per query (100: ~0.4 s).
    candidates: int = 150
    hits_per_candidate: int = 8  # regions fetched per wanted image: an image returns several regions
    # IVF cells at full size. 256 keeps training to seconds (k-means on <= 256 x 39 points);
    # at 100,000 images (~13M regions) a query then scans nprobe/nlist of the PQ codes, ~1.6M x 56 B.
    nlist: int = 256
    # Each region is described by its blocks x blocks sub-windows, each mean-pooled and
    # L2-normalised, concatenated: the inner product of two is the mean of the sub-windows'
    # cosines, which keeps the coarse layout that one mean over the window blurs, so it
    # ranks images more as the dense scan (mean of per-cell cosines in register) does.
    # benchmarks.detect, collage bank of 300 real demo images, 150 candidates, 6 queries:
    # recall of the exact top-10 images 0.683 -> 0.750 at 1,000 images, 0.850 -> 0.967 at
    # 10,000 (top-1 the same 2/6 -> 5/6), 0.267 -> 0.333 at 100,000 (3 queries; near-ties
    # among ~3,000 collages of each tile; counting images that tie with the exact 10th: 1.000);
    # 2.8 -> 8.1 kB per image. On 1,000 real images: 0.833 (flat search, same descriptors: 0.908).
    blocks: int = 2
    # Dimensions per PQ sub-quantizer (112 channels: 28 sub-quantizers). 2 dims (16 kB per
    # image) gave 0.875 instead of 0.833 on 1,000 real images but 0.933 instead of 0.967 at
    # 10,000 collages (benchmarks.detect --pq-dims): not worth twice the memory.
    pq_dims: int = 4
    # 4-bit codes (16 centroids per sub-quantizer) use FAISS's SIMD "fast scan": half a byte
    # per sub-quantizer (56 bytes per region of 2 x 2 blocks), trained in seconds where 8-bit
    # codes on 4-7 dims took minutes on 2 cores.
    pq_bits: int = 4
    nprobe: int = 32  # IVF cells visited per query (1/8 of them: recall measured in benchmarks.detect)
    flat_below: int = 20_000  # regions: under this, an exact flat index (nothing to train)
    regrow: float = 4.0  # retrain IVF-PQ when the index holds this many times what it was trained on

    def regions(self, pyramid: FeaturePyramid) -> torch.Tensor:
        """The pyramid's region descriptors as this config makes them (:func:`region_descriptors`)."""
        return region_descriptors(pyramid, self.window, self.stride, self.blocks)

    def key(self) -> str:
        """What changes the stored regions or how they are indexed (not search-time knobs)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("candidates", "hits_per_candidate", "nprobe")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def _window_blocks(x: torch.Tensor, kh: int, kw: int, stride: int, blocks: int) -> torch.Tensor:
    """(C, h, w) cells -> (R, blocks^2 C): every kh x kw window, ``stride`` cells apart, as its
    blocks x blocks sub-windows' means, each L2-normalised, concatenated, then normalised."""
    bh, bw = max(1, kh // blocks), max(1, kw // blocks)
    means = F.avg_pool2d(x[None], (bh, bw), stride=1)[0]  # the mean of every bh x bw patch
    top = torch.arange((x.shape[1] - kh) // stride + 1) * stride  # windows' first rows
    left = torch.arange((x.shape[2] - kw) // stride + 1) * stride
    parts = []
    for a in range(blocks):  # sub-windows spread over the window (all of it when kh % blocks == 0)
        for b in range(blocks):
            dy = round(a * (kh - bh) / (blocks - 1)) if blocks > 1 else 0
            dx = round(b * (kw - bw) / (blocks - 1)) if blocks > 1 else 0
            part = means[:, top + dy][:, :, left + dx]  # (C, rows, cols)
            parts.append(F.normalize(part.flatten(1).T, dim=1))
    return F.normalize(torch.cat(parts, dim=1), dim=1)


def region_descriptors(pyramid: FeaturePyramid, window: int = AnnConfig.window, stride: int = AnnConfig.stride,
                       blocks: int = AnnConfig.blocks) -> torch.Tensor:
    """Windows of every level of one pyramid, each described by ``blocks`` x ``blocks``
    mean-pooled sub-windows (1: the window's mean), L2-normalised.

    A level smaller than the window is pooled whole (one region).

    Returns:
        (R, blocks^2 C) float32 descriptors, levels in order, windows row-major within a level.
    """
    parts = []
    for level in pyramid.levels:
        x = level.float()  # (C, h, w)
        parts.append(_window_blocks(x, min(window, x.shape[1]), min(window, x.shape[2]), stride, blocks))
    return torch.cat(parts)


def query_descriptor(query: torch.Tensor, blocks: int = AnnConfig.blocks) -> torch.Tensor:
    """(C, qh, qw) query features -> (blocks^2 C,) its cells described as a region is, float32."""
    if query.ndim != 3:
        raise ValueError(f"query features must be (C, qh, qw), got shape {tuple(query.shape)}")
    return _window_blocks(query.float(), query.shape[1], query.shape[2], 1, blocks)[0]


@dataclass
class RegionIndex:
    """A FAISS index of regions whose ids are positions in ``image_ids``.

    Attributes:
        index: the FAISS index (``IndexIDMap`` over flat, or IVF-PQ with ids).
        image_ids: image of each id, in the order they were added.
        config: how regions were made and indexed.
        trained_on: regions the IVF-PQ was built for (0 for a flat index).
    """

    index: object
    image_ids: list[str]
    config: AnnConfig
    trained_on: int = 0
    _positions: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._positions = {image_id: i for i, image_id in enumerate(self.image_ids)}

    @classmethod
    def build(cls, image_ids: Sequence[str], descriptors: Sequence[torch.Tensor], config: AnnConfig = AnnConfig()) -> RegionIndex:
        """A new index over ``descriptors[i]`` (R_i, C) of ``image_ids[i]``; IVF-PQ when large enough."""
        if len(image_ids) != len(descriptors):
            raise ValueError(f"{len(image_ids)} image ids for {len(descriptors)} descriptor sets")
        if not descriptors:
            raise ValueError("an index needs at least one image")
        vectors, labels = _stack(descriptors, 0)
        index, trained = _new_index(vectors, config)
        out = cls(index, [], config, trained)
        out._add(list(image_ids), vectors, labels)
        return out

    @classmethod
    def build_streamed(cls, image_ids: Sequence[str], describe: Callable[[str], torch.Tensor],
                       config: AnnConfig = AnnConfig(), chunk: int = 2000) -> RegionIndex:
        """Like :meth:`build` without holding every image's regions at once (100,000 images
        are ~6 GB of float32 regions): IVF-PQ trains on the first ``chunk`` images, the rest
        are added ``chunk`` at a time. ``describe`` gives an image's (R, C) regions."""
        ids = list(image_ids)
        if not ids:
            raise ValueError("an index needs at least one image")
        first = [describe(i) for i in ids[:chunk]]
        expected = sum(len(d) for d in first) * len(ids) / len(first)  # regions of the whole collection
        vectors, labels = _stack(first, 0)
        index, _ = _new_index(vectors, config, flat=expected < config.flat_below)
        out = cls(index, [], config, 0 if expected < config.flat_below else 1)
        out._add(ids[:chunk], vectors, labels)
        for start in range(chunk, len(ids), chunk):
            part = ids[start : start + chunk]
            out.add(part, [describe(i) for i in part])
        if not out.is_flat:
            out.trained_on = out.n_regions  # retrain once the collection has grown regrow x from here
        return out

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._positions

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def n_regions(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_flat(self) -> bool:
        return self.trained_on == 0

    def add(self, image_ids: Sequence[str], descriptors: Sequence[torch.Tensor]) -> None:
        """Add new images without retraining (IVF-PQ encodes them with its trained cells)."""
        fresh = [(i, d) for i, d in zip(image_ids, descriptors) if i not in self._positions]
        if not fresh:
            return
        vectors, labels = _stack([d for _, d in fresh], len(self.image_ids))
        self._add([i for i, _ in fresh], vectors, labels)

    def needs_retraining(self) -> bool:
        """A flat index grown past ``flat_below``, or IVF-PQ holding ``regrow`` x its training set."""
        if self.is_flat:
            return self.n_regions >= self.config.flat_below
        return self.n_regions >= self.config.regrow * self.trained_on

    def search_query(self, query: torch.Tensor, candidates: int | None = None) -> list[tuple[str, float]]:
        """:meth:`search` with (C, qh, qw) query features, described as this index's regions are."""
        return self.search(query_descriptor(query, self.config.blocks), candidates)

    def search(self, query: torch.Tensor, candidates: int | None = None) -> list[tuple[str, float]]:
        """Images whose best region is nearest to ``query`` (C,), best first, at most ``candidates``."""
        import faiss

        want = min(candidates or self.config.candidates, len(self.image_ids))
        if want == 0 or self.n_regions == 0:
            return []
        if not self.is_flat:
            faiss.extract_index_ivf(self.index).nprobe = self.config.nprobe
        q = np.ascontiguousarray(query.detach().float().cpu().numpy().reshape(1, -1))
        if q.shape[1] != self.index.d:
            raise ValueError(f"a query of {q.shape[1]} dimensions for an index of {self.index.d}: describe it "
                             f"with the index's blocks ({self.config.blocks})")
        k = want * self.config.hits_per_candidate
        while True:  # a few images may own most of the nearest regions: widen until enough images
            k = min(k, self.n_regions)
            scores, labels = self.index.search(q, k)
            order: dict[int, float] = {}
            for label, score in zip(labels[0].tolist(), scores[0].tolist()):
                if label >= 0 and label not in order:  # hits come best first: the first is the image's best
                    order[label] = score
            if len(order) >= want or k == self.n_regions:
                break
            k *= 4
        return [(self.image_ids[label], score) for label, score in list(order.items())[:want]]

    def nbytes(self) -> int:
        """Bytes of the serialised index (what it costs in RAM and on disk)."""
        import faiss

        return int(faiss.serialize_index(self.index).size)

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        """``folder/regions.faiss`` + ``folder/meta.json``, each replaced atomically."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "regions.faiss.tmp"
        faiss.write_index(self.index, str(tmp))
        tmp.replace(folder / "regions.faiss")
        meta = {"image_ids": self.image_ids, "config": asdict(self.config), "trained_on": self.trained_on, **(extra or {})}
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(folder / "meta.json")

    @classmethod
    def load(cls, folder: str | Path) -> tuple[RegionIndex, dict]:
        """The index saved in ``folder`` and its meta (with whatever ``extra`` was saved)."""
        import faiss

        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        index = faiss.read_index(str(folder / "regions.faiss"))
        return cls(index, list(meta["image_ids"]), AnnConfig(**meta["config"]), int(meta["trained_on"])), meta

    def _add(self, image_ids: list[str], vectors: np.ndarray, labels: np.ndarray) -> None:
        self.index.add_with_ids(vectors, labels)
        for image_id in image_ids:
            self._positions[image_id] = len(self.image_ids)
            self.image_ids.append(image_id)


def _stack(descriptors: Sequence[torch.Tensor], first_label: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum R_i, C) float32 vectors and (sum R_i,) int64 labels first_label + i."""
    vectors = np.ascontiguousarray(torch.cat([d.float().cpu() for d in descriptors]).numpy())
    counts = [len(d) for d in descriptors]
    labels = np.repeat(np.arange(first_label, first_label + len(counts), dtype=np.int64), counts)
    return vectors, labels


def _new_index(vectors: np.ndarray, config: AnnConfig, flat: bool | None = None) -> tuple[object, int]:
    """A flat index for few regions (or when ``flat``), else IVF-PQ trained on ``vectors``;
    and the number of regions it was trained for (0 for flat)."""
    import faiss

    dim = vectors.shape[1]
    if flat if flat is not None else len(vectors) < config.flat_below:
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim)), 0
    if dim % config.pq_dims:
        raise ValueError(f"{dim} channels do not split into PQ sub-vectors of {config.pq_dims}")
    # k-means wants ~39 points per centroid: a small training set gets fewer IVF cells.
    n = len(vectors)
    nlist = max(1, min(config.nlist, n // 39))
    codes = f"PQ{dim // config.pq_dims}x{config.pq_bits}" + ("fs" if config.pq_bits == 4 else "")
    index = faiss.index_factory(dim, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
    # A fixed sample of 64 points per centroid trains as well as all of them for picking
    # candidates (the dense scan re-scores) at a fraction of the time; seeded, so a
    # rebuild gives the same index.
    sample = max(64 * nlist, 64 * 2**config.pq_bits)
    if len(vectors) > sample:
        vectors = vectors[np.random.default_rng(0).choice(len(vectors), sample, replace=False)]
    faiss.extract_index_ivf(index).cp.niter = 10
    index.train(vectors)
    return index, n


@torch.no_grad()
def two_stage_detect(query: torch.Tensor, index: RegionIndex, pyramid_of: Callable[[str], FeaturePyramid],
                     config: DetectConfig = DetectConfig(), candidates: int | None = None,
                     exclude: tuple[str, Box] | None = None, device: torch.device | str = "cpu") -> list[Detection]:
    """The index's candidate images, then the exact dense scan of :func:`engine.detect.detect` on them.

    Args:
        query: (C, qh, qw) query features (:func:`engine.detect.query_features`).
        pyramid_of: image id -> its pyramid (e.g. a :class:`engine.features.CachedPyramids`),
            so only the candidates' features are ever read.
        candidates: images re-scored densely (default ``index.config.candidates``).
    """
    hits = index.search_query(query, candidates)
    if not hits:
        return []
    ids = [image_id for image_id, _ in hits]
    device = torch.device(device)
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    bank = FeatureBank.build(ids, [pyramid_of(i) for i in ids], device=device, dtype=dtype)
    return detect(query, bank, config, exclude=exclude)


# ---------------------------------------------------------------- shortlist at scale (issue 12, item 6)


def ann_knn_graph(desc: torch.Tensor, k: int, config: AnnConfig = AnnConfig(), hits_per_region: int = 32,
                  chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate :func:`engine.shortlist.knn_graph`: the k most similar images of every image,
    image similarity being the max cosine over region pairs, found through a FAISS index of
    all regions (IVF-PQ above ``config.flat_below`` regions) instead of every region pair.

    Each region of an image fetches its ``hits_per_region`` nearest regions; an image's
    neighbours are the other images among those hits, ranked by their best hit.

    Args:
        desc: (N, R, C) L2-normalised regional descriptors (:func:`engine.shortlist.global_descriptors`).

    Returns:
        (N, k) neighbour indices (-1 where fewer were found) and similarities (-inf there), best first.
    """
    if desc.ndim != 3:
        raise ValueError(f"descriptors must be (N, R, C), got shape {tuple(desc.shape)}")
    n, r, c = desc.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    vectors = np.ascontiguousarray(desc.reshape(n * r, c).float().numpy())
    labels = np.repeat(np.arange(n, dtype=np.int64), r)
    index, trained = _new_index(vectors, config)
    index.add_with_ids(vectors, labels)
    if trained:
        import faiss

        faiss.extract_index_ivf(index).nprobe = config.nprobe
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_sim = np.full((n, k), -np.inf, dtype=np.float32)
    hits = min(hits_per_region, n * r)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        scores, ids = index.search(vectors[start * r : stop * r], hits)  # (rows * R, hits)
        rows = np.repeat(np.arange(start, stop), r * hits)
        _best_per_row(rows, ids.reshape(-1), scores.reshape(-1), k, out_idx, out_sim)
    return torch.from_numpy(out_idx), torch.from_numpy(out_sim)


def _best_per_row(rows: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int,
                  out_idx: np.ndarray, out_sim: np.ndarray) -> None:
    """For each row, the k best other ids by their best score (vectorised group-by)."""
    keep = (ids >= 0) & (ids != rows)  # no padding, an image is not its own neighbour
    rows, ids, scores = rows[keep], ids[keep], scores[keep]
    order = np.lexsort((-scores, ids, rows))  # by row, then id, best score first
    rows, ids, scores = rows[order], ids[order], scores[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (ids[1:] != ids[:-1])
    rows, ids, scores = rows[first], ids[first], scores[first]  # one (row, id) each, its best score
    order = np.lexsort((ids, -scores, rows))  # by row, best first (ties by id: deterministic)
    rows, ids, scores = rows[order], ids[order], scores[order]
    starts = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - starts
    top = rank < k
    out_idx[rows[top], rank[top]] = ids[top]
    out_sim[rows[top], rank[top]] = scores[top]
