"""How many of a round's positive pairs are right, per source, from attached ground truth.

A positive pair (P1, P2) is right when the centres of both cells lie on copies of one
same motif (a ground-truth box of the attached annotation files, or within 0.3 IoU of
one, as the simulated expert of ``benchmarks.loop`` judges links). Pairs that only push
apart (rejected links, source ``REJECTED``, whose positive is the anchor's own cell
at another scale) are not counted. A round prints and stores these figures so that
a bad source of positives shows up before it teaches the model the scenery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from db.store import Store
from engine.detect import FeatureBank
from engine.mining import PairBatch
from engine.types import Box
from hitl.evaluation import project_queries

TRUE_IOU = 0.3  # the paper's one-shot protocol threshold, reused to judge a box against a copy


@dataclass(frozen=True)
class Copy:
    """A ground-truth copy of a motif in a project image."""

    image_id: str
    motif: str
    box: Box


def ground_truth_copies(store: Store) -> dict[str, list[Copy]]:
    """Image id -> the ground-truth copies it holds, from the attached annotation files."""
    copies: dict[str, set[Copy]] = {}
    for q in project_queries(store):
        for inst in (q.query, *q.targets):
            copies.setdefault(inst.image, set()).add(Copy(inst.image, q.motif, inst.box))
    return {image: sorted(found, key=lambda c: (c.motif, c.box.as_list())) for image, found in copies.items()}


def motifs_at(box: Box, copies: Sequence[Copy]) -> set[str]:
    """Motifs of the copies ``box`` covers: IoU above 0.3, or its centre inside the copy."""
    cx, cy = box.center
    return {c.motif for c in copies
            if box.iou(c.box) > TRUE_IOU or (c.box.x0 <= cx < c.box.x1 and c.box.y0 <= cy < c.box.y1)}


def cell_centres(bank: FeatureBank, refs: torch.Tensor) -> torch.Tensor:
    """(P, 2) pixel (x, y) of the centre of each cell reference ``[image, level, row, col]`` (P, 4)."""
    refs = refs.cpu()
    valid = torch.stack([v.cpu() for v in bank.valid])  # (L, N, 2) h, w
    hw = valid[refs[:, 1], refs[:, 0]].double()
    size = bank.sizes.cpu().double()[refs[:, 0]]  # (P, 2) W, H
    return torch.stack([(refs[:, 3] + 0.5) * size[:, 0] / hw[:, 1], (refs[:, 2] + 0.5) * size[:, 1] / hw[:, 0]], 1)


def right_pairs(batch: PairBatch, bank: FeatureBank, truth: dict[str, list[Copy]]) -> torch.Tensor:
    """(P,) bool: both cells' centres lie on copies of one motif (False for negative-only pairs)."""
    copies = [c for found in truth.values() for c in found]
    if not copies or len(batch) == 0:
        return torch.zeros(len(batch), dtype=torch.bool)
    index = {image_id: i for i, image_id in enumerate(bank.image_ids)}
    motifs = sorted({c.motif for c in copies})
    image = torch.tensor([index.get(c.image_id, -1) for c in copies])  # (G,)
    motif = torch.tensor([motifs.index(c.motif) for c in copies])
    boxes = torch.tensor([c.box.as_list() for c in copies], dtype=torch.float64)  # (G, 4)

    def on(refs: torch.Tensor) -> torch.Tensor:  # (P, M) bool: the cell's centre lies on a copy of motif m
        xy = cell_centres(bank, refs)
        inside = ((xy[:, None, 0] >= boxes[:, 0]) & (xy[:, None, 0] < boxes[:, 2]) & (xy[:, None, 1] >= boxes[:, 1])
                  & (xy[:, None, 1] < boxes[:, 3]) & (refs[:, None, 0].cpu() == image))  # (P, G)
        hits = torch.zeros(len(refs), len(motifs), dtype=torch.bool)
        return hits.index_put_((inside.nonzero()[:, 0], motif[inside.nonzero()[:, 1]]), torch.tensor(True))

    positive = torch.where(batch.positive_mask[:, None], batch.positive, batch.anchor).cpu()
    return (on(batch.anchor) & on(positive)).any(dim=1) & batch.positive_mask.cpu() & (batch.source.cpu() != PairBatch.REJECTED)


def precision_by_source(batch: PairBatch, bank: FeatureBank, truth: dict[str, list[Copy]]) -> dict[str, dict[str, float]]:
    """``{source: {"pairs": n, "precision": p}}`` over the positive pairs of each source."""
    right = right_pairs(batch, bank, truth)
    out: dict[str, dict[str, float]] = {}
    for code, name in enumerate(PairBatch.SOURCE_NAMES):
        if code == PairBatch.REJECTED:  # negatives: their positive is right by construction
            continue
        sel = (batch.source.cpu() == code) & batch.positive_mask.cpu()
        n = int(sel.sum())
        if n:
            out[name] = {"pairs": n, "precision": float(right[sel].float().mean())}
    return out
