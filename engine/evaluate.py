"""The paper's one-shot detection protocol (§5.2, Table 1) and annotation readers.

For each annotated query, detections over the collection are walked in rank order; a
detection is correct when its IoU with a not-yet-matched instance of the same motif in
that image exceeds 0.3 (the query's own instance is not a target). AP of a query is the
sum of the precisions at the correct ranks divided by its number of targets (as in the
authors' ``eval.py``); APs are averaged per motif class, and mAP is the mean over classes.

Annotations: ArtMiner JSON (``brueghelTest.json``: class -> [{"query": [file, box],
"gt": [[file, box], ...]}]) or a VGG Image Annotator 2 project, whose rectangles are
grouped into classes by a region attribute.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.types import Box, Detection


class AnnotationError(ValueError):
    """An annotation file that cannot be read; the message names the file and the entry."""


@dataclass(frozen=True)
class Instance:
    image: str  # file name, as written in the annotation file
    box: Box


@dataclass(frozen=True)
class Query:
    motif: str
    query: Instance
    targets: tuple[Instance, ...]


@dataclass(frozen=True)
class QueryResult:
    query: Query
    ap: float
    top1: bool


@dataclass(frozen=True)
class EvalResult:
    per_query: tuple[QueryResult, ...]
    per_class: dict[str, float] = field(default_factory=dict)

    @property
    def mean_ap(self) -> float:
        return float(np.mean(list(self.per_class.values()))) if self.per_class else 0.0

    @property
    def top1(self) -> float:
        return float(np.mean([r.top1 for r in self.per_query])) if self.per_query else 0.0


def average_precision(detections: Sequence[Detection], targets: Sequence[Instance], iou: float = 0.3,
                      max_detections: int = 100) -> tuple[float, bool]:
    """AP of ranked detections against target instances, and whether rank 1 is correct."""
    if not targets:
        return 0.0, False
    matched = np.zeros(len(targets), dtype=bool)
    precisions = []
    first_correct = False
    for rank, det in enumerate(detections[:max_detections]):
        for t, target in enumerate(targets):
            if not matched[t] and det.image_id == target.image and det.box.iou(target.box) > iou:
                matched[t] = True
                precisions.append((len(precisions) + 1) / (rank + 1))
                first_correct = first_correct or rank == 0
                break
    return float(np.sum(precisions) / len(targets)), first_correct


def evaluate(queries: Sequence[Query], detect_fn: Callable[[Query], Sequence[Detection]],
             iou: float = 0.3) -> EvalResult:
    """Run ``detect_fn`` on every query and score it with the paper's protocol."""
    results = []
    for q in queries:
        ap, top1 = average_precision(list(detect_fn(q)), q.targets, iou)
        results.append(QueryResult(q, ap, top1))
    per_class: dict[str, list[float]] = {}
    for r in results:
        per_class.setdefault(r.query.motif, []).append(r.ap)
    return EvalResult(tuple(results), {m: float(np.mean(v)) for m, v in sorted(per_class.items())})


def load_annotations(path: str | Path) -> list[Query]:
    """Read ArtMiner JSON or a VIA 2 project into queries (format detected from content)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{path}: cannot read annotations ({err})") from err
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f"{path}: expected a JSON object of annotations")
    if "_via_img_metadata" in data or all(isinstance(v, dict) and "regions" in v for v in data.values()):
        return _queries_from_via(data.get("_via_img_metadata", data), path)
    return _queries_from_artminer(data, path)


def _box(raw, where: str) -> Box:
    try:
        x0, y0, x1, y1 = (float(v) for v in raw)
        return Box(x0, y0, x1, y1)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"{where}: bad box {raw!r} ({err})") from err


def _queries_from_artminer(data: dict, path: Path) -> list[Query]:
    queries = []
    for motif, entries in data.items():
        if not isinstance(entries, list):
            raise AnnotationError(f"{path}: class {motif!r} is not a list of queries")
        for n, entry in enumerate(entries):
            where = f"{path}: class {motif!r} entry {n}"
            try:
                q_file, q_box = entry["query"]
                targets = tuple(Instance(str(f), _box(b, where)) for f, b in entry["gt"])
            except (KeyError, TypeError, ValueError) as err:
                if isinstance(err, AnnotationError):
                    raise
                raise AnnotationError(f"{where}: expected {{'query': [file, box], 'gt': [[file, box], ...]}}") from err
            queries.append(Query(str(motif), Instance(str(q_file), _box(q_box, where)), targets))
    return queries


def via_instances(metadata: dict, path: str | Path = "VIA") -> list[tuple[str, Instance]]:
    """(class, instance) for every rectangle of a VIA 2 project; class = first region attribute."""
    out = []
    for key, item in metadata.items():
        if not isinstance(item, dict) or "filename" not in item:
            raise AnnotationError(f"{path}: entry {key!r} has no filename")
        for r, region in enumerate(item.get("regions") or []):
            shape = region.get("shape_attributes", {})
            if shape.get("name") != "rect":
                continue
            where = f"{path}: {item['filename']} region {r}"
            try:
                box = Box.from_xywh(shape["x"], shape["y"], shape["width"], shape["height"])
            except (KeyError, TypeError, ValueError) as err:
                raise AnnotationError(f"{where}: bad rectangle {shape!r}") from err
            attrs = region.get("region_attributes") or {}
            label = next((str(v) for v in attrs.values() if isinstance(v, str | int) and str(v)), "")
            out.append((label or "detail", Instance(item["filename"], box)))
    return out


def _queries_from_via(metadata: dict, path: Path) -> list[Query]:
    by_class: dict[str, list[Instance]] = {}
    for motif, inst in via_instances(metadata, path):
        by_class.setdefault(motif, []).append(inst)
    queries = []
    for motif, instances in sorted(by_class.items()):
        for i, inst in enumerate(instances):
            others = tuple(instances[:i] + instances[i + 1 :])
            if others:
                queries.append(Query(motif, inst, others))
    return queries


def format_table(results: dict[str, EvalResult]) -> str:
    """Per-class AP, mAP and top-1, one column per evaluated model/method."""
    names = list(results)
    classes = sorted({c for r in results.values() for c in r.per_class})
    width = max([len(c) for c in classes] + [12])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{n:>20}" for n in names)]
    for c in classes:
        lines.append(f"{c:<{width}}  " + "  ".join(f"{results[n].per_class.get(c, float('nan')):>20.3f}" for n in names))
    lines.append(f"{'mAP':<{width}}  " + "  ".join(f"{results[n].mean_ap:>20.3f}" for n in names))
    lines.append(f"{'top-1':<{width}}  " + "  ".join(f"{results[n].top1:>20.3f}" for n in names))
    return "\n".join(lines)
