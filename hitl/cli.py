"""The ``artminer`` command line: one verb per step of the cycle.

Errors are one line naming the problem: exit 2 for bad usage or input, 1 for a run
that failed. Every verb that prints a result takes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from engine.types import Box

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class UsageError(Exception):
    """Bad usage or input: reported in one line, exit code 2."""


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {}


def verb(name: str):
    def wrap(fn):
        VERBS[name] = fn
        return fn

    return wrap


# ------------------------------------------------------------------ shared helpers


def _load_backbone(name: str, device: str, weights: str | None = None):
    from engine.backbone import create_backbone, resolve_device

    backbone = create_backbone(name, weights=weights)
    return backbone.to(resolve_device(device))


def _print(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2) if as_json else text)


def _parse_box(text: str) -> Box:
    try:
        return Box.parse(text)
    except ValueError as err:
        raise UsageError(str(err)) from err


# ------------------------------------------------------------------ verbs


@verb("detect")
def cmd_detect(args: argparse.Namespace) -> int:
    """One-shot detection of a boxed detail over a folder of images."""
    from engine.detect import DetectConfig
    from engine.images import image_size
    from hitl import oneshot

    query = Path(args.image)
    if not query.is_file():
        raise UsageError(f"query image not found: {query}")
    box = _parse_box(args.box)
    width, height = image_size(query)
    if not box.inside(width, height):
        raise UsageError(f"box {args.box} is outside the {width}x{height} image {query}")
    backbone = _load_backbone(args.model, args.device, args.weights)
    items = oneshot.list_images(args.collection)
    if not items:
        raise UsageError(f"no images found in {args.collection}")
    collection = oneshot.load_collection(backbone, items, Path(args.cache) if args.cache else oneshot.default_cache_root(),
                                         progress=not args.quiet)
    _report_failures(collection.failures)
    query_id = _id_in_collection(query, Path(args.collection))
    config = DetectConfig(top_k=args.top_k)
    dets = oneshot.query_collection(backbone, collection, query, box, config, query_id=query_id)
    if args.rerank:
        from hitl.rerank import rerank_detections

        dets = rerank_detections(backbone, collection, query, box, dets, top_n=args.rerank_top)
    rows = [{"image": str(collection.paths[d.image_id]), "box": [round(v, 1) for v in d.box.as_list()],
             "score": round(d.score, 4)} for d in dets]
    text = "\n".join(f"{i + 1:>3}  {r['score']:.3f}  {r['image']}  {r['box']}" for i, r in enumerate(rows))
    _print(rows, args.json, text or "no detections")
    return 0


def _id_in_collection(path: Path, folder: Path) -> str | None:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None


def _report_failures(failures) -> None:
    for f in failures:
        print(f"warning: skipped {f.path}: {f.reason}", file=sys.stderr)


@verb("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    """The paper's one-shot mAP (IoU > 0.3) for one or more models."""
    from engine.evaluate import format_table, load_annotations
    from hitl import oneshot

    if not args.annotations or not args.images:
        raise UsageError("eval needs --annotations FILE and --images DIR")
    queries = load_annotations(args.annotations)
    if not queries:
        raise UsageError(f"{args.annotations}: no query with at least one target")
    items = oneshot.list_images(args.images)
    cache = Path(args.cache) if args.cache else oneshot.default_cache_root()
    results, payload = {}, {}
    for name in args.model or ["effnet-lite0"]:
        backbone = _load_backbone(name, args.device, args.weights)
        collection = oneshot.load_collection(backbone, items, cache, progress=not args.quiet)
        _report_failures(collection.failures)
        runs = {name: None}
        if args.rerank:
            from hitl.rerank import make_reranker

            runs[f"{name} +discovery score"] = make_reranker(backbone, collection)
        for label, reranker in runs.items():
            res = oneshot.evaluate_collection(backbone, collection, queries, progress=not args.quiet, rerank=reranker)
            results[label] = res
            payload[label] = {"mAP": res.mean_ap, "top1": res.top1, "per_class": res.per_class}
    _print(payload, args.json, format_table(results))
    return 0


@verb("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    """Build the bundled demo collection with its ground truth."""
    from hitl.demo import build_demo

    out = Path(args.out)
    demo = build_demo(out, seed=args.seed, progress=not args.quiet)
    print(f"demo collection written to {out} ({len(list((out / 'images').iterdir()))} images)")
    return 0 if demo else 1


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artminer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, help_text: str, model=False, project=False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if project:
            p.add_argument("--project", default="artminer.duckdb", help="project file (default ./artminer.duckdb)")
        if model:
            p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
            p.add_argument("--weights", help="local weights file for the backbone (e.g. resnet18-f37072fd.pth)")
            p.add_argument("--cache", help="feature cache folder for folder collections")
        return p

    p = add("detect", "one-shot detection of a boxed detail over a collection", model=True)
    p.add_argument("image", help="query image")
    p.add_argument("--box", required=True, help="x0,y0,x1,y1 in the query image's pixels")
    p.add_argument("--collection", required=True, help="folder of images to search")
    p.add_argument("--model", default="effnet-lite0", help="backbone name or checkpoint path")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--rerank", action="store_true", help="re-rank the top hits by the discovery score")
    p.add_argument("--rerank-top", type=int, default=50, help="how many top hits to re-rank")

    p = add("eval", "one-shot detection mAP with the paper's protocol", model=True)
    p.add_argument("--annotations", help="ArtMiner JSON (e.g. brueghelTest.json) or VIA 2 file")
    p.add_argument("--images", help="folder holding the annotated images")
    p.add_argument("--model", action="append", help="backbone name or checkpoint; repeat to compare")
    p.add_argument("--rerank", action="store_true", help="also report mAP after discovery-score re-ranking")

    p = add("demo", "build the demo collection, its ground truth and project")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.backbone import BackboneError
    from engine.evaluate import AnnotationError
    from engine.images import ImageReadError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except (UsageError, BackboneError, AnnotationError, ImageReadError, FileNotFoundError, ValueError) as err:
        print(f"artminer {args.verb}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"artminer {args.verb}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # noqa: BLE001 - a failed run is one line, not a traceback
        print(f"artminer {args.verb}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
