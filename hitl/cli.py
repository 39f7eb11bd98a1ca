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

        dets = rerank_detections(backbone, collection, query, box, dets, args.rerank_top, query_id)
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

    if args.project and not (args.annotations or args.images):
        return _eval_project(args)
    if not args.annotations or not args.images:
        raise UsageError("eval needs --annotations FILE and --images DIR, or --project FILE")
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


def _eval_project(args: argparse.Namespace) -> int:
    from engine.evaluate import format_table
    from hitl.evaluation import evaluate_project
    from hitl.project import load_model, open_project

    store, paths = open_project(args.project)
    models = args.model or [None]
    payload, tables = [], []
    for name in models:
        backbone = load_model(store, name, args.device)
        res = evaluate_project(store, paths, backbone, rerank=args.rerank or args.discovery,
                               discovery=args.discovery, progress=not args.quiet)
        payload.append(res.to_dict())
        lines = [f"model {res.model_id}", format_table(res.oneshot)]
        if res.discovery:
            d = res.discovery
            lines.append(f"discovery (run {int(d['run_id'])}, min score {d['min_score']:g}): "
                         f"{int(d['links'])} links, pair precision {d['pair_precision']:.3f}, "
                         f"pair recall {d['pair_recall']:.3f}, {int(d['clusters'])} clusters, "
                         f"cluster purity {d['cluster_purity']:.3f}")
        elif args.discovery:
            lines.append("discovery: no finished discovery run for this model (run `artminer discover`)")
        if res.shortlist_recall:
            lines.append("shortlist recall of ground-truth pairs: " + ", ".join(
                f"k={k}: {v:.3f}" for k, v in res.shortlist_recall.items()))
        tables.append("\n".join(lines))
    _print(payload if len(payload) > 1 else payload[0], args.json, "\n\n".join(tables))
    return 0


@verb("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    """Build the demo collection, its ground truth, and a ready project."""
    from db.store import Store
    from hitl.demo import build_demo
    from hitl.ingest import ingest_paths
    from hitl.project import active_model_id

    out = Path(args.out)
    demo = build_demo(out, seed=args.seed, n_images=args.images, progress=not args.quiet)
    project = out / "artminer.duckdb"
    with Store(project) as store:
        report = ingest_paths(store, [demo.images_dir], metadata_csv=demo.metadata, progress=not args.quiet)
        store.attach_annotations(demo.ground_truth, "artminer", label="demo ground truth")
        active_model_id(store)
    print(f"demo collection: {len(demo.files)} images, {len(demo.classes)} motifs in {out}\n"
          f"ground truth: {demo.ground_truth} (VIA: {demo.ground_truth_via})\n"
          f"project: {project} ({len(report.added)} images added)")
    return 0


@verb("ingest")
def cmd_ingest(args: argparse.Namespace) -> int:
    """Add images (folders, IIIF manifests, VIA files) and metadata to a project."""
    from hitl.ingest import ingest_paths
    from hitl.project import open_project

    if not args.paths and not args.metadata and not args.annotations:
        raise UsageError("ingest needs at least one PATH, --metadata CSV or --annotations FILE")
    store, paths = open_project(args.project, create=True)
    report = ingest_paths(store, args.paths, metadata_csv=args.metadata, cache_dir=paths.image_cache,
                          progress=not args.quiet)
    for ann in args.annotations or []:
        from engine.evaluate import load_annotations

        load_annotations(ann)  # refuse a malformed file now, not at evaluation time
        store.attach_annotations(ann, "artminer" if not ann.endswith("via.json") else "via")
    _print(report.to_dict(), args.json, report.summary())
    return 0


@verb("discover")
def cmd_discover(args: argparse.Namespace) -> int:
    """Find repeated details: shortlist, verify pairs, build clusters and the map."""
    from dataclasses import replace

    from engine.graph import GraphConfig
    from hitl.discover import DiscoverConfig, run_discovery
    from hitl.project import open_project

    store, paths = open_project(args.project)
    if store.count_images() == 0:
        raise UsageError(f"{args.project} has no images; run `artminer ingest` first")
    config = DiscoverConfig(pairs=args.pairs, k=args.k, batch_size=args.batch_size)
    if args.min_score is not None:
        config = replace(config, min_score=args.min_score)
    if args.graph != "paper":
        config = replace(config, graph=GraphConfig(mode=args.graph))
    report = run_discovery(store, paths, config, model=args.model, device=args.device, progress=not args.quiet)
    for failure in report.failures:
        print(f"warning: skipped {failure}", file=sys.stderr)
    text = (f"run {report.run_id} with {report.model_id}: {report.n_images} images, {report.n_pairs} candidate "
            f"pairs ({report.n_verified_now} verified now), {report.n_links} links above "
            f"{config.min_score:g}, {report.n_clusters} clusters in {report.seconds:.1f} s")
    _print(report.__dict__, args.json, text)
    return 0


@verb("train")
def cmd_train(args: argparse.Namespace) -> int:
    """One training round: collect positives, fine-tune, save a new model, re-discover, measure."""
    import time

    from tqdm import tqdm

    from engine.train import TrainConfig
    from hitl.jobs import acquire_training_lock, release_training_lock
    from hitl.project import open_project
    from hitl.rounds import RoundConfig, RoundRefused, run_round

    if args.steps < 1 or (args.minutes is not None and args.minutes <= 0):
        raise UsageError("--steps must be >= 1 and --minutes > 0")
    store, paths = open_project(args.project)
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    train_config = TrainConfig(steps=args.steps, minutes=args.minutes, seed=args.seed, freeze=args.freeze)
    config = RoundConfig(sources=sources, seed=args.seed, rediscover=not args.no_discover, train=train_config)
    acquire_training_lock(paths, args=sys.argv[1:])
    try:
        bar = tqdm(total=args.steps, desc="training", unit="step", disable=args.quiet)
        began: list[float] = []

        def on_step(log, total) -> None:
            began.append(began[0] if began else time.perf_counter() - log.step_s)
            bar.update(1)
            bar.set_postfix(loss=f"{log.loss:.3f}", mined=log.n_used_mined, expert=log.n_used_expert)
            if args.quiet:  # a log file (the app's background round) gets one line per step
                elapsed = time.perf_counter() - began[0]
                left = elapsed / (log.iteration + 1) * (total - log.iteration - 1)
                if args.minutes is not None:
                    left = min(left, max(0.0, 60 * args.minutes - elapsed))
                print(f"step {log.iteration + 1}/{total} loss {log.loss:.4f} mined {log.n_used_mined} "
                      f"expert {log.n_used_expert} elapsed {elapsed:.0f} s eta {left:.0f} s", flush=True)

        def say(line: str) -> None:  # stage lines between the bar's updates
            if args.quiet:
                print(line, flush=True)
            else:
                tqdm.write(line)

        try:
            report = run_round(store, paths, config, from_model=args.from_model, device=args.device,
                               progress=on_step, show_progress=not args.quiet, log=say)
        except RoundRefused as err:
            raise UsageError(str(err)) from err
        bar.close()
    finally:
        release_training_lock(paths)
    lines = [f"round {report.round_id}: {report.parent} -> {report.new_model}, {report.steps} steps in {report.seconds:.0f} s"]
    for key in sorted(set(report.before) | set(report.after)):
        if key not in ("model", "oneshot_queries"):
            lines.append(f"  {key:<26} before {report.before.get(key, float('nan')):.3f}   after {report.after.get(key, float('nan')):.3f}")
    for name, figures in report.positives.items():
        if "pairs" in figures:
            precision = f"   precision {figures['precision']:.3f}" if "precision" in figures else ""
            lines.append(f"  positives {name:<16} {figures['pairs']:>6} pairs{precision}")
    _print(report.__dict__, args.json, "\n".join(lines))
    return 0


@verb("export")
def cmd_export(args: argparse.Namespace) -> int:
    """Write confirmed links (or every verdict) in a format other tools read."""
    from hitl.export import export_links
    from hitl.project import open_project

    store, _ = open_project(args.project)
    n = export_links(store, args.format, args.out, all_verdicts=args.all_verdicts)
    _print({"written": n, "out": args.out}, args.json, f"wrote {n} links to {args.out} ({args.format})")
    return 0


@verb("app")
def cmd_app(args: argparse.Namespace) -> int:
    """Serve the review app on a project."""
    import os
    import subprocess

    project = Path(args.project)
    if not project.is_file():
        raise UsageError(f"project file not found: {project}")
    app = Path(__file__).resolve().parent.parent / "streamlit_app.py"
    env = dict(os.environ, ARTMINER_PROJECT=str(project.resolve()))
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
               "--server.address", args.address, "--server.headless", "true",
               "--browser.gatherUsageStats", "false"]
    print(f"ArtMiner app on http://{args.address}:{args.port} (project {project})", flush=True)
    # Streamlit reads .streamlit/config.toml from the working directory.
    return subprocess.call(command, env=env, cwd=app.parent)


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
    p.add_argument("--project", help="evaluate a project against its attached annotation files")
    p.add_argument("--discovery", action="store_true",
                   help="with --project: also discovered-pair precision/recall, cluster purity, shortlist recall")

    p = add("demo", "build the demo collection, its ground truth and project")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=60, help="number of images")

    p = add("ingest", "add images, IIIF manifests, VIA files and metadata to a project", project=True)
    p.add_argument("paths", nargs="*", help="folders, image files, IIIF manifests (file or URL), VIA files")
    p.add_argument("--metadata", help="CSV/TSV of metadata joined by file name")
    p.add_argument("--annotations", action="append", help="attach a ground-truth file for evaluation")

    p = add("discover", "discover repeated details across the project's images", model=True, project=True)
    p.add_argument("--model", help="model id or checkpoint (default: the project's active model)")
    p.add_argument("--pairs", default="knn", choices=["knn", "all"])
    p.add_argument("--k", type=int, default=20, help="neighbours per image in the shortlist")
    p.add_argument("--min-score", type=float, help="discovery score threshold for links")
    p.add_argument("--graph", default="paper", choices=["paper", "strict"], help="correspondence graph mode")
    p.add_argument("--batch-size", type=int, default=32, help="pairs verified together")

    p = add("train", "a training round: fine-tune on mined pairs, discovery links and expert verdicts", model=True, project=True)
    p.add_argument("--steps", "--iterations", dest="steps", type=int, default=100,
                   help="Adam steps of the round (authors' code: 50 per mining round, ~15k in all)")
    p.add_argument("--minutes", type=float, help="time budget of the steps; the round stops at whichever comes first")
    p.add_argument("--sources", default="mined,expert",
                   help="mined, discovery, expert (comma-separated); discovery links are weak positives, off by default")
    p.add_argument("--freeze", default="last-stage", choices=["last-stage", "none"],
                   help="train only the last stage on the cached frozen trunk (default), or every layer")
    p.add_argument("--from", dest="from_model", help="model to start from (default: the active model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-discover", action="store_true", help="skip re-discovery with the new model")

    p = add("export", "export confirmed links (or all verdicts)", project=True)
    p.add_argument("--format", required=True, choices=["csv", "json", "w3c", "iiif", "training"])
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--all-verdicts", action="store_true", help="every verdict, not only confirmed links")

    p = add("app", "serve the review app", project=True)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1")
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
