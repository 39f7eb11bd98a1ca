"""Training rounds as rows for tables and charts: what each round changed, and what is new since.

A round's metrics are stored as ``{"before": {name: value}, "after": {name: value}, ...}``
(both models measured on the same held-out data); nested groups are flattened to
dotted names (``holdout.ap``). Non-numeric values are left out of charts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from db.records import REVOKE, VERDICTS, TrainingRound, Verdict
from hitl.progress import STOPPED_PREFIX


def metric_rows(rounds: Sequence[TrainingRound]) -> list[dict[str, Any]]:
    """One row per (round, metric): ``{"round", "metric", "before", "after"}`` (None if unmeasured)."""
    rows = []
    for rnd in rounds:
        before = _flat(rnd.metrics.get("before", {}))
        after = _flat(rnd.metrics.get("after", {}))
        for name in sorted(set(before) | set(after)):
            rows.append({"round": rnd.round_id, "metric": name,
                         "before": before.get(name), "after": after.get(name)})
    return rows


# Figures a round measures about itself, in the order the Training page shows them.
ROUND_FIGURES = ("oneshot_map", "oneshot_top1", "heldout_link_ap", "heldout_confirmed_recall")
POSITIVE_SOURCES = ("expert", "discovery", "mined", "rejected")  # rejected: hard negatives, pairs only


def round_table(rounds: Sequence[TrainingRound]) -> list[dict[str, Any]]:
    """One row per round: its status and steps, each figure before -> after, and the
    pairs and measured precision of each source of positives it learned from."""
    rows = []
    for rnd in rounds:
        before, after = rnd.metrics.get("before", {}), rnd.metrics.get("after", {})
        row: dict[str, Any] = {"round": rnd.round_id, "status": rnd.status, "steps": rnd.metrics.get("steps")}
        for name in ROUND_FIGURES:
            if name in before or name in after:
                row[name] = f"{_fmt(before.get(name))} -> {_fmt(after.get(name))}"
        positives = rnd.metrics.get("positives", {})
        for source in POSITIVE_SOURCES:
            if source in positives:
                p = positives[source]
                row[f"{source} pairs"] = p.get("pairs")
                if source != "rejected":  # hard negatives: no precision of positives to show
                    row[f"{source} precision"] = p.get("precision")
        if "activated" in rnd.metrics:  # rounds gated on their own held-out signal (hitl.rounds.validated)
            row["new model"] = "made active" if rnd.metrics["activated"] else f"not activated: {rnd.metrics.get('gate', '')}"
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def verdict_counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """How many confirm / reject / unsure / undo rows a stretch of the log holds."""
    counts = Counter(v.verdict for v in verdicts)
    return {**{k: counts.get(k, 0) for k in VERDICTS}, "undo": counts.get(REVOKE, 0)}


def last_round_start(rounds: Sequence[TrainingRound]) -> datetime | None:
    """When the latest *finished* round started: verdicts after it are new to training.

    A round that failed or was stopped taught nothing, so its start is no watermark.
    """
    return max((r.started for r in rounds if r.status == "done"), default=None)


def round_state(rnd: TrainingRound) -> str:
    """``running``, ``done``, ``failed`` or ``stopped`` (a failed round stopped on request)."""
    if rnd.status == "failed" and (rnd.error or "").startswith(STOPPED_PREFIX):
        return "stopped"
    return rnd.status


def _flat(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out
