"""One-shot detection of a query detail over a whole collection (paper §5.2).

The query box is resized so its longer side spans 8 feature cells and cropped with up
to 5 cells of context on each side (the authors' code, against zero-padding effects at
the query's border); the features of the box's own cells are kept. Its (C, qh, qw)
features are then slid over every level of every image (a batched matmul and a strided
window sum per level, equal to a convolution) on a zero-padded batch of images. The score of a window is the mean cosine similarity
of its cells to the query's (``score="cells"``), or, as the authors' code, one cosine
between the whole query and the window (``score="window"``: query cells keep their raw
magnitudes, so strongly activated cells weigh more; the bank's cells are unit vectors,
so the window's norm is the square root of its cell count). Local maxima become boxes
in original pixels, boxes of one image are suppressed across levels (NMS), and the best
``top_k`` are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from engine.backbone import Backbone
from engine.features import FeaturePyramid, embed_cells, rgb_to_tensor
from engine.types import Box, Detection

SCORES = ("cells", "window")


@dataclass(frozen=True)
class DetectConfig:
    query_side: int = 8  # paper §5.2: the query's longer side in feature cells
    top_k: int = 100  # detections returned (the paper scores the top 100)
    peaks_per_level: int = 4  # local maxima kept per image and level before NMS
    nms_iou: float = 0.3  # boxes of one image overlapping more than this are one hit
    self_iou: float = 0.3  # a hit this close to the query's own box is the query itself
    chunk_images: int = 256  # images per batched convolution (bounds memory)
    # Authors' code: up to 5 cells of context around the query box (0: a bare crop). On the
    # demo (benchmarks/oneshot_parity.py): mAP 0.369 bare -> 0.440 with context.
    query_context: int = 5
    # "window": one window-level cosine (authors' code); "cells": mean of per-cell cosines.
    # On the demo with context: 0.455 window vs 0.440 cells (without context 0.367 vs 0.369).
    score: str = "window"

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"DetectConfig.score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.query_context < 0:
            raise ValueError(f"DetectConfig.query_context must be >= 0, got {self.query_context}")


def query_shape(box: Box, query_side: int) -> tuple[int, int]:
    """(qh, qw) cells for a box whose longer side gets ``query_side`` cells."""
    scale = query_side / max(box.width, box.height)
    return max(1, round(box.height * scale)), max(1, round(box.width * scale))


def query_features(backbone: Backbone, rgb: np.ndarray, box: Box, query_side: int = 8, context: int = 0,
                   score: str = "cells") -> torch.Tensor:
    """Features of the query region, resized to ``query_side`` cells on its longer side.

    Args:
        rgb: (H, W, 3) uint8 query image; ``box`` in its pixels.
        context: cells of the image around the box run through the backbone with it (as
            many as the image holds, up to ``context`` per side), then cut away: the box's
            border cells then see their real surroundings, not zero padding.
        score: ``"cells"``: every cell L2-normalised; ``"window"``: raw cells, the whole
            query scaled to norm sqrt(qh * qw), so that :func:`detect`'s mean over the
            window is one window-level cosine.

    Returns:
        (C, qh, qw) features on the backbone's device.

    Raises:
        ValueError: the box is not inside the image.
    """
    height, width = rgb.shape[:2]
    if not box.inside(width, height):
        raise ValueError(f"box {[round(v) for v in box.as_list()]} is outside the {width}x{height} image")
    qh, qw = query_shape(box, query_side)
    cy, cx = box.height / qh, box.width / qw  # pixels per query cell
    # Whole context cells per side that fit in the image.
    left, top = min(context, int(box.x0 // cx)), min(context, int(box.y0 // cy))
    right, bottom = min(context, int((width - box.x1) // cx)), min(context, int((height - box.y1) // cy))
    x0, y0 = box.x0 - left * cx, box.y0 - top * cy
    x1, y1 = box.x1 + right * cx, box.y1 + bottom * cy
    ix0, iy0 = int(x0), int(y0)
    ix1, iy1 = max(int(np.ceil(x1)), ix0 + 1), max(int(np.ceil(y1)), iy0 + 1)
    crop = rgb_to_tensor(rgb[iy0:iy1, ix0:ix1])
    shape = (qh + top + bottom, qw + left + right)
    if score == "window":
        raw = embed_cells(backbone, crop, shape, forward=backbone)[0, :, top : top + qh, left : left + qw]
        return raw * (float(qh * qw) ** 0.5 / raw.norm().clamp_min(1e-12))
    return embed_cells(backbone, crop, shape)[0, :, top : top + qh, left : left + qw]


@dataclass
class FeatureBank:
    """A collection's pyramids, zero-padded to square levels so one conv covers a chunk.

    Attributes:
        image_ids: N ids, in bank order.
        levels: per level, (N, C, S_k, S_k) features (S_k the level's longer side).
        valid: per level, (N, 2) true (h, w) of each image's map.
        sizes: (N, 2) original (W, H) pixels.
    """

    image_ids: list[str]
    levels: list[torch.Tensor]
    valid: list[torch.Tensor]
    sizes: torch.Tensor
    _compute: list[torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, image_ids: Sequence[str], pyramids: Sequence[FeaturePyramid], device="cpu", dtype=None) -> FeatureBank:
        if not pyramids:
            raise ValueError("the collection has no readable images")
        n_levels = len(pyramids[0].levels)
        dtype = dtype or pyramids[0].levels[0].dtype
        channels = pyramids[0].levels[0].shape[0]
        levels, valid = [], []
        for k in range(n_levels):
            shapes = [tuple(p.levels[k].shape[1:]) for p in pyramids]
            side = max(max(shape) for shape in shapes)
            # Filled as (N, S, S, C), which viewed as (N, C, S, S) is channels-last, the layout
            # the scan reads: each image's (h, w, C) rows are written contiguously (writing
            # (C, h, w) into a channels-last tensor was 2/3 of an indexed query's CPU time).
            bank = torch.zeros(len(pyramids), side, side, channels, dtype=dtype, device=device)
            for i, p in enumerate(pyramids):
                h, w = shapes[i]
                bank[i, :h, :w] = p.levels[k].permute(1, 2, 0)
            levels.append(bank.permute(0, 3, 1, 2))
            valid.append(torch.tensor(shapes, device=device))
        sizes = torch.tensor([p.image_size for p in pyramids], dtype=torch.float32, device=device)
        return cls(list(image_ids), levels, valid, sizes)

    def __len__(self) -> int:
        return len(self.image_ids)

    def compute_levels(self) -> list[torch.Tensor]:
        """The levels in the dtype the convolutions run in, converted on first use only.

        A float16 bank on the CPU is matched in float32 (the CPU has no fast float16
        convolution); converting it once, not per query, keeps the half-precision copy
        out of every query's time (issue 12).
        The float32 copy replaces the float16 one, so memory does not triple.
        """
        if self._compute is None:
            compute = torch.float32 if self.levels[0].device.type == "cpu" else self.levels[0].dtype
            # channels-last: window_scores reads every cell's channels as one matmul row
            self.levels = [level.to(dtype=compute, memory_format=torch.channels_last) for level in self.levels]
            self._compute = self.levels
        return self._compute

    def pyramid(self, index: int) -> FeaturePyramid:
        """The unpadded pyramid of image ``index`` (views into the bank, no copy)."""
        levels = tuple(level[index, :, : int(v[index, 0]), : int(v[index, 1])] for level, v in zip(self.levels, self.valid))
        width, height = self.sizes[index].tolist()
        return FeaturePyramid(levels, (int(width), int(height)))


def window_scores(level: torch.Tensor, valid: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the query at every window position.

    Args:
        level: (B, C, S, S) padded features; valid: (B, 2) true (h, w).
        query: (C, qh, qw).

    Returns:
        (B, S - qh + 1, S - qw + 1) scores, -inf where the window leaves the image.
    """
    qh, qw = query.shape[1:]
    b, c, height, width = level.shape
    compute = torch.float32 if level.device.type == "cpu" else level.dtype
    # Cell-to-query-cell cosines as one matmul, then each window sums its diagonal
    # (image cell (y+i, x+j) against query cell (i, j)) through a strided view: the same
    # numbers as a convolution with one output channel, ~4x faster on the CPU (issue 12).
    cells = level.to(compute).permute(0, 2, 3, 1).reshape(b, height * width, c)  # a view when channels-last
    sim = (cells @ query.to(compute).reshape(c, qh * qw)).view(b, height, width, qh, qw)
    s_b, s_y, s_x, s_i, s_j = sim.stride()
    windows = sim.as_strided((b, height - qh + 1, width - qw + 1, qh, qw), (s_b, s_y, s_x, s_y + s_i, s_x + s_j))
    scores = windows.sum(dim=(3, 4)).float() / (qh * qw)
    rows = torch.arange(scores.shape[1], device=scores.device)
    cols = torch.arange(scores.shape[2], device=scores.device)
    inside = (rows[None, :, None] <= (valid[:, 0] - qh)[:, None, None]) & (
        cols[None, None, :] <= (valid[:, 1] - qw)[:, None, None]
    )
    return scores.masked_fill(~inside, float("-inf"))


def level_peaks(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k`` local maxima (3x3) per image of a (B, R, C) score map.

    Returns:
        (B, k) scores (-inf where fewer peaks exist), rows, cols.
    """
    pooled = F.max_pool2d(scores[:, None], 3, stride=1, padding=1)[:, 0]
    peaks = scores.masked_fill(scores < pooled, float("-inf")).flatten(1)
    k = min(k, peaks.shape[1])
    top, index = peaks.topk(k, dim=1)
    return top, index // scores.shape[2], index % scores.shape[2]


@torch.no_grad()
def detect(query: torch.Tensor, bank: FeatureBank, config: DetectConfig = DetectConfig(),
           exclude: tuple[str, Box] | None = None) -> list[Detection]:
    """Ranked detections of ``query`` (C, qh, qw) over every image and level of ``bank``.

    Args:
        exclude: (image_id, box) of the query itself; hits overlapping it by more than
            ``config.self_iou`` are dropped.
    """
    qh, qw = query.shape[1:]
    query = query.to(bank.levels[0].device)
    boxes, scores, owners = [], [], []
    for level, valid in zip(bank.compute_levels(), bank.valid):
        if level.shape[2] < qh or level.shape[3] < qw:
            continue
        for start in range(0, len(bank), config.chunk_images):
            stop = start + config.chunk_images
            s, rows, cols = level_peaks(window_scores(level[start:stop], valid[start:stop], query), config.peaks_per_level)
            cell_x = bank.sizes[start:stop, 0:1] / valid[start:stop, 1:2]
            cell_y = bank.sizes[start:stop, 1:2] / valid[start:stop, 0:1]
            box = torch.stack([cols * cell_x, rows * cell_y, (cols + qw) * cell_x, (rows + qh) * cell_y], dim=-1)
            owner = torch.arange(start, start + s.shape[0], device=s.device)[:, None].expand_as(s)
            keep = torch.isfinite(s)
            boxes.append(box[keep])
            scores.append(s[keep])
            owners.append(owner[keep])
    if not scores:
        return []
    boxes, scores, owners = torch.cat(boxes), torch.cat(scores), torch.cat(owners)
    keep = batched_nms(boxes.float(), scores, owners, config.nms_iou)
    return _rank(boxes[keep].cpu(), scores[keep].cpu(), owners[keep].cpu(), bank, config, exclude)


def _rank(boxes, scores, owners, bank: FeatureBank, config: DetectConfig, exclude) -> list[Detection]:
    out: list[Detection] = []
    for b, s, o in zip(boxes.tolist(), scores.tolist(), owners.tolist()):  # already score-sorted by NMS
        image_id = bank.image_ids[o]
        width, height = bank.sizes[o].tolist()
        box = Box(*b).clip(width, height)
        if exclude is not None and image_id == exclude[0] and box.iou(exclude[1]) > config.self_iou:
            continue
        out.append(Detection(image_id, box, float(s)))
        if len(out) >= config.top_k:
            break
    return out
