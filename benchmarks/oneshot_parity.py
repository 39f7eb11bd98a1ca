"""One-shot mAP per class with and without the authors' detection choices, on a project.

    python -m benchmarks.oneshot_parity --project DEMO/artminer.duckdb [--model NAME]
                                        [--variants bare,context,window,context+window]

Evaluates the project's attached annotations (the paper's protocol: IoU > 0.3, AP per
query, mean per class, mAP over classes) with the project's active model, once per
variant of :class:`engine.detect.DetectConfig`:

* ``bare``: the query box cropped without context, mean of per-cell cosines (before);
* ``context``: up to 5 cells of context around the query (authors' code);
* ``window``: one window-level cosine, the query's raw cell magnitudes kept (authors');
* ``context+window``: both.

Prints a table: one row per class, one column per variant, then mAP and top-1.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from engine.detect import DetectConfig
from hitl.evaluation import project_queries
from hitl.oneshot import evaluate_collection, load_project_collection
from hitl.project import load_model, open_project

VARIANTS = {
    "bare": DetectConfig(query_context=0, score="cells"),
    "context": DetectConfig(query_context=5, score="cells"),
    "window": DetectConfig(query_context=0, score="window"),
    "context+window": DetectConfig(query_context=5, score="window"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--model", help="model id or checkpoint (default: the project's active model)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not names or set(names) - set(VARIANTS):
        parser.error(f"--variants must name some of {', '.join(VARIANTS)}")
    store, paths = open_project(args.project)
    queries = project_queries(store)
    if not queries:
        parser.error("the project has no ground truth attached")
    backbone = load_model(store, args.model, args.device)
    collection = load_project_collection(store, paths, backbone, progress=False)
    results, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        results[name] = evaluate_collection(backbone, collection, queries, replace(VARIANTS[name]), progress=False)
        seconds[name] = time.perf_counter() - start
    classes = sorted(results[names[0]].per_class)
    print(f"model {backbone.model_id}, {len(queries)} queries, {len(classes)} classes")
    print(f"{'class':<16}" + "".join(f"{n:>16}" for n in names))
    for c in classes:
        print(f"{c:<16}" + "".join(f"{results[n].per_class[c]:>16.3f}" for n in names))
    print(f"{'mAP':<16}" + "".join(f"{results[n].mean_ap:>16.3f}" for n in names))
    print(f"{'top-1':<16}" + "".join(f"{results[n].top1:>16.3f}" for n in names))
    print(f"{'seconds':<16}" + "".join(f"{seconds[n]:>16.0f}" for n in names))


if __name__ == "__main__":
    main()
