"""The README's table of demo figures, measured again and written between its markers.

    python -m benchmarks.report --project DEMO/artminer.duckdb [--model NAME]   # measure, write JSON + README
    python -m benchmarks.report --from-json                                      # README from the JSON only

Measures on a project with ground truth attached (the demo): one-shot mAP and top-1 with
cosine similarity and with discovery-score re-ranking, the latest discovery run's links,
pair precision / recall and cluster purity, the shortlist's recall of ground-truth pairs,
and the wall time of the evaluation. Writes them to ``benchmarks/report.json`` (checked
in) and rewrites the README's table between ``<!-- report:start -->`` and
``<!-- report:end -->``. ``tests/benchmarks/test_report.py`` checks that the README's table
is the one this JSON renders to, so a figure cannot go stale silently: re-measuring is
this one command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = Path(__file__).resolve().parent / "report.json"
README = ROOT / "README.md"
START, END = "<!-- report:start -->", "<!-- report:end -->"


def measure(project: str, model: str | None = None, device: str = "cpu") -> dict:
    """The figures of the report, from a project with annotations attached."""
    from hitl.evaluation import evaluate_project, project_queries
    from hitl.project import load_model, open_project

    store, paths = open_project(project)
    backbone = load_model(store, model, device)
    start = time.perf_counter()
    res = evaluate_project(store, paths, backbone, rerank=True, discovery=True, progress=False)
    seconds = time.perf_counter() - start
    cosine, rerank = res.oneshot["cosine"], res.oneshot["discovery score"]
    return {
        "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}",
        "command": f"python -m benchmarks.report --project {Path(project).name}",
        "images": store.count_images(),
        "queries": len(project_queries(store)),
        "model": backbone.model_id,
        "oneshot_map": round(cosine.mean_ap, 3),
        "oneshot_top1": round(cosine.top1, 3),
        "oneshot_map_rerank": round(rerank.mean_ap, 3),
        "per_class": {k: round(v, 3) for k, v in cosine.per_class.items()},
        "discovery": {k: round(v, 3) for k, v in res.discovery.items()},
        "shortlist_recall": {str(k): round(v, 3) for k, v in res.shortlist_recall.items()},
        "eval_seconds": round(seconds),
    }


def render(report: dict) -> str:
    """The README's block (markers included) for a report."""
    d = report.get("discovery", {})
    recall = report.get("shortlist_recall", {})
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in report["per_class"].items())
    rows = [
        ("one-shot mAP on the demo (IoU > 0.3), top-1", f"**{report['oneshot_map']:.3f}**, top-1 {report['oneshot_top1']:.3f}"),
        ("one-shot AP per class", per_class),
        ("one-shot mAP, cosine vs discovery-score re-ranking", f"{report['oneshot_map']:.3f} vs {report['oneshot_map_rerank']:.3f}"),
    ]
    if d:
        rows.append((f"discovered image pairs at min score {d['min_score']:g}",
                     f"{d['links']:.0f} links, pair precision {d['pair_precision']:.2f}, recall {d['pair_recall']:.2f}; "
                     f"{d['clusters']:.0f} clusters, purity {d['cluster_purity']:.2f}"))
    if recall:
        rows.append((f"shortlist recall of ground-truth pairs, k = {' / '.join(recall)}",
                     " / ".join(f"{v:.2f}" for v in recall.values())))
    rows.append(("evaluation wall time (one-shot twice + discovery figures)", f"{report['eval_seconds']} s"))
    lines = [START,
             f"Model `{report['model']}` on {report['images']} images, {report['queries']} queries; measured "
             f"{report['measured']} ({report['machine']}) by `{report['command']}`.",
             "",
             "| what | figure |",
             "|---|---|",
             *(f"| {what} | {figure} |" for what, figure in rows),
             END]
    return "\n".join(lines)


def rewrite_readme(text: str, block: str) -> str:
    """``text`` with the block between the markers replaced by ``block``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {START} ... {END} block")
    return text[:start] + block + text[end + len(END):]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", help="project with ground truth attached (the demo)")
    parser.add_argument("--model", help="model id or checkpoint (default: the project's active model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--from-json", action="store_true", help="only re-render the README from report.json")
    args = parser.parse_args(argv)
    if args.from_json == bool(args.project):
        parser.error("give --project to measure, or --from-json to re-render")
    if args.project:
        report = measure(args.project, args.model, args.device)
        JSON_PATH.write_text(json.dumps(report, indent=2) + "\n")
    report = json.loads(JSON_PATH.read_text())
    README.write_text(rewrite_readme(README.read_text(), render(report)))
    print(render(report))


if __name__ == "__main__":
    main()
