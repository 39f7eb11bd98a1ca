"""The ``artminer`` command line: one verb per step of the cycle.

Errors are one line naming the problem: exit 2 for bad usage or input, 1 for a run
that failed. Every verb that prints a result takes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
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


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM (the app's Stop button, ``kill``) unwinds the round so it records ``stopped``."""
    from hitl.rounds import RoundStopped

    raise RoundStopped(f"signal {signal.Signals(signum).name}")


def run_forwarding_signals(command: list[str], **popen) -> int:
    """Run ``command`` and pass SIGTERM, SIGINT and SIGHUP on to it; returns its exit code
    (128 + the signal's number when a signal ended it, as a shell reports it).

    Without this, ``artminer app`` killed by SIGTERM (a service manager, a test
    harness) dies alone and leaves its Streamlit child serving the port.
    """
    child = subprocess.Popen(command, **popen)
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, lambda signum, frame: child.send_signal(signum))
                for s in forwarded}
    try:
        while True:
            try:
                code = child.wait()
                return 128 - code if code < 0 else code
            except KeyboardInterrupt:  # only if a handler was replaced under us
                child.send_signal(signal.SIGINT)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------ verbs


@verb("detect")
def cmd_detect(args: argparse.Namespace) -> int:
    """One-shot detection of a boxed detail over a folder of images or a project."""
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
    if args.project:
        return _detect_in_project(args, query, box)
    if not args.collection:
        raise UsageError("detect needs --collection DIR or --project FILE")
    backbone = _load_backbone(args.model or "effnet-lite0", args.device, args.weights)
    items = oneshot.list_images(args.collection)
    if not items:
        raise UsageError(f"no images found in {args.collection}")
    collection = oneshot.load_collection(backbone, items, Path(args.cache) if args.cache else oneshot.default_cache_root(),
                                         progress=not args.quiet)
    _report_failures(collection.failures)
    query_id = _id_in_collection(query, Path(args.collection))
    config = DetectConfig(top_k=args.top_k)
    dets = oneshot.query_collection(backbone, collection, query, box, config, query_id=query_id,
                                    mirror=not args.no_mirror)
    if args.rerank:
        from hitl.rerank import rerank_detections

        dets = rerank_detections(backbone, collection, query, box, dets, args.rerank_top, query_id)
    rows = [{"image": str(collection.paths[d.image_id]), "box": [round(v, 1) for v in d.box.as_list()],
             "score": round(d.score, 4), "mirrored": d.mirrored} for d in dets]
    text = "\n".join(f"{i + 1:>3}  {r['score']:.3f}  {r['image']}  {r['box']}" + ("  mirrored" if r["mirrored"] else "")
                     for i, r in enumerate(rows))
    _print(rows, args.json, text or "no detections")
    return 0


def _detect_in_project(args: argparse.Namespace, query: Path, box: Box) -> int:
    """Detection over a project's images: the region index's candidates, then the dense
    scan (issue 12); ``--exact`` scans every image densely."""
    from engine.detect import DetectConfig
    from engine.images import load_rgb
    from hitl import oneshot
    from hitl.index import open_project_index, query_project
    from hitl.project import load_model, open_project

    store, paths = open_project(args.project)
    backbone = load_model(store, args.model, args.device)  # default: the project's active model
    resolved = query.resolve()
    query_id = next((img.image_id for img in store.list_images() if Path(img.path).resolve() == resolved), None)
    config = DetectConfig(top_k=args.top_k)
    if args.exact:
        collection = oneshot.load_project_collection(store, paths, backbone, progress=not args.quiet)
        dets = oneshot.query_collection(backbone, collection, query, box, config, query_id=query_id)
    else:
        project = open_project_index(store, paths, backbone, progress=not args.quiet)
        dets = query_project(backbone, project, load_rgb(query), box, config, query_id, args.candidates)
    where = {img.image_id: img.path for img in store.list_images()}
    rows = [{"image": str(where.get(d.image_id, d.image_id)), "box": [round(v, 1) for v in d.box.as_list()],
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
    demo = build_demo(out, seed=args.seed, n_images=args.images, progress=not args.quiet, n_sources=args.sources)
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
    from hitl.ingest import FetchLimits, ingest_paths
    from hitl.project import open_project

    if not args.paths and not args.metadata and not args.annotations:
        raise UsageError("ingest needs at least one PATH, --metadata CSV or --annotations FILE")
    store, paths = open_project(args.project, create=True)
    if args.max_pixels is not None:
        from engine.images import HARD_MAX_PIXELS
        from hitl.formats.image_files import MAX_PIXELS_SETTING

        if not 0 < args.max_pixels <= HARD_MAX_PIXELS:
            raise UsageError(f"--max-pixels must be between 1 and {HARD_MAX_PIXELS}")
        store.set_setting(MAX_PIXELS_SETTING, str(args.max_pixels))
    limits = FetchLimits(deadline_s=args.download_deadline, max_bytes=int(args.max_download_mb * 2**20))
    report = ingest_paths(store, args.paths, metadata_csv=args.metadata, cache_dir=paths.image_cache,
                          progress=not args.quiet, limits=limits)
    for ann in args.annotations or []:
        from engine.evaluate import load_annotations

        load_annotations(ann)  # refuse a malformed file now, not at evaluation time
        store.attach_annotations(ann, "artminer" if not ann.endswith("via.json") else "via")
    _print(report.to_dict(), args.json, report.summary())
    return 0


def _executor(args: argparse.Namespace):
    """The executor of ``--executor`` (Ray started and joined here), or None for in-process."""
    from hitl.executors import make_executor

    if args.executor == "local":
        if args.address or args.workers:
            raise UsageError("--address and --workers go with --executor ray")
        return None
    try:
        executor = make_executor("ray", address=args.address, workers=args.workers,
                                 device="cuda" if args.device == "cuda" else "cpu")
    except ImportError as err:
        raise UsageError(f"--executor ray needs Ray: pip install 'artminer-hitl[ray]' ({err})") from err
    executor.start()
    return executor


@verb("discover")
def cmd_discover(args: argparse.Namespace) -> int:
    """Find repeated details: shortlist, verify pairs, build clusters and the map."""
    from dataclasses import replace

    from engine.graph import GraphConfig
    from hitl.agreement import AgreementConfig
    from hitl.discover import DiscoverConfig, run_discovery
    from hitl.project import open_project

    executor = _executor(args)  # before the project opens: Ray must start while no DuckDB file is open
    store, paths = open_project(args.project)
    if store.count_images() == 0:
        raise UsageError(f"{args.project} has no images; run `artminer ingest` first")
    config = DiscoverConfig(pairs=args.pairs, k=args.k, expand=args.expand, expand_k=args.expand_k,
                            batch_size=args.batch_size, groups=args.groups,
                            mirror=args.mirror, masks=args.masks, style=not args.no_style,
                            agreement=AgreementConfig(mode=args.agreement))
    if args.min_score is not None:
        config = replace(config, min_score=args.min_score)
    if args.graph != "paper":
        config = replace(config, graph=GraphConfig(mode=args.graph))
    try:
        report = run_discovery(store, paths, config, model=args.model, device=args.device, progress=not args.quiet,
                               executor=executor)
    finally:
        if executor is not None:
            executor.close()
    for failure in report.failures:
        print(f"warning: skipped {failure}", file=sys.stderr)
    text = (f"run {report.run_id} with {report.model_id}: {report.n_images} images, {report.n_pairs} candidate "
            f"pairs ({report.n_two_hop} of them two-hop; {report.n_verified_now} verified now), {report.n_links} links above "
            f"{config.min_score:g}, {report.n_clusters} clusters in {report.seconds:.1f} s")
    _print(report.__dict__, args.json, text)
    return 0


@verb("train")
def cmd_train(args: argparse.Namespace) -> int:
    """One training round: collect positives, fine-tune, save a new model, re-discover, measure."""
    import time

    from tqdm import tqdm

    from engine.train import TrainConfig
    from hitl.jobs import acquire_training_lock, release_training_lock, settle_orphan_rounds
    from hitl.progress import LineStream, phase_line
    from hitl.project import open_project
    from hitl.rounds import PHASES, RoundConfig, RoundRefused, run_round

    if args.steps is None:
        args.steps = TrainConfig.steps
    if args.steps < 1 or (args.minutes is not None and args.minutes <= 0):
        raise UsageError("--minutes must be > 0 (and --steps >= 1)")
    store, paths = open_project(args.project)
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    train_config = TrainConfig(steps=args.steps, minutes=args.minutes, seed=args.seed, freeze=args.freeze)
    config = RoundConfig(sources=sources, seed=args.seed, rediscover=not args.no_discover, gate=not args.no_gate,
                         train=train_config)
    acquire_training_lock(paths, args=sys.argv[1:])
    settle_orphan_rounds(store, paths)  # we hold the lock: a 'running' round now is a killed one
    if not sys.stderr.isatty():  # a log file: one line per progress refresh, no '\r' redraws
        sys.stderr = LineStream(sys.stderr)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        bars: list = []  # the training bar, drawn when its phase starts (not before phase 1)
        began: list[float] = []

        def training_bar(total: int):
            if not bars:
                bars.append(tqdm(total=total, desc="training", unit="step", disable=args.quiet))
            return bars[0]

        def on_step(log, total) -> None:
            began.append(began[0] if began else time.perf_counter() - log.step_s)
            bar = training_bar(total)
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

        def on_phase(index: int, total: int, name: str) -> None:
            print(phase_line(index, total, name), file=sys.stderr, flush=True)
            if name == PHASES[3]:  # training: its bar shows 0/N at once
                training_bar(args.steps)

        try:
            report = run_round(store, paths, config, from_model=args.from_model, device=args.device,
                               progress=on_step, show_progress=not args.quiet, log=say, on_phase=on_phase)
        except RoundRefused as err:
            raise UsageError(str(err)) from err
        for bar in bars:
            bar.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
        release_training_lock(paths)
    lines = [f"round {report.round_id}: {report.parent} -> {report.new_model}, {report.steps} steps in {report.seconds:.0f} s"]
    for key in sorted(set(report.before) | set(report.after)):
        if key not in ("model", "oneshot_queries"):
            lines.append(f"  {key:<26} before {report.before.get(key, float('nan')):.3f}   after {report.after.get(key, float('nan')):.3f}")
    for name, figures in report.positives.items():
        if "pairs" in figures:
            precision = f"   precision {figures['precision']:.3f}" if "precision" in figures else ""
            lines.append(f"  positives {name:<16} {figures['pairs']:>6} pairs{precision}")
    lines.append(f"  new model {'made active' if report.activated else 'NOT activated'}: {report.gate}")
    _print(report.__dict__, args.json, "\n".join(lines))
    return 0


@verb("export")
def cmd_export(args: argparse.Namespace) -> int:
    """Write confirmed links (or every verdict) in a format other tools read."""
    from hitl.export import export_links
    from hitl.project import open_project

    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; name a file")
    store, _ = open_project(args.project)
    n = export_links(store, args.format, args.out, all_verdicts=args.all_verdicts)
    _print({"written": n, "out": args.out}, args.json, f"wrote {n} links to {args.out} ({args.format})")
    return 0


@verb("app")
def cmd_app(args: argparse.Namespace) -> int:
    """Serve the review app on a project."""
    import os

    project = Path(args.project)
    if not project.is_file():
        raise UsageError(f"project file not found: {project}")
    # The ASGI entry serves streamlit_app.py behind hitl.page_urls' middleware: page URLs
    # opened directly (/map) cause no 404s (streamlit/streamlit#7074).
    app = Path(__file__).resolve().parent.parent / "streamlit_asgi.py"
    env = dict(os.environ, ARTMINER_PROJECT=str(project.resolve()))
    env.pop("ARTMINER_PROJECTS", None)
    if args.projects:
        if not Path(args.projects).is_dir():
            raise UsageError(f"--projects {args.projects} is not a folder")
        env["ARTMINER_PROJECTS"] = str(Path(args.projects).resolve())  # the app opens only these
    if args.auth:
        env["ARTMINER_AUTH"] = args.auth  # every project the app opens, not only this one
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
               "--server.address", args.address, "--server.headless", "true",
               "--browser.gatherUsageStats", "false"]
    print(f"ArtMiner app on http://{args.address}:{args.port} (project {project})", flush=True)
    # Streamlit reads .streamlit/config.toml from the working directory.
    return run_forwarding_signals(command, env=env, cwd=app.parent)


@verb("users")
def cmd_users(args: argparse.Namespace) -> int:
    """Add, remove and list users; set the project's sign-in mode."""
    from hitl.project import open_project
    from hitl.users import (
        AUTH_MODES,
        OIDC_DEFAULT_ROLE_SETTING,
        add_user,
        auth_mode,
        list_users,
        remove_user,
        set_auth_mode,
        users_file,
    )

    store, paths = open_project(args.project)
    path = users_file(paths.project)
    if args.action == "list":
        users = list_users(path)
        _print({"auth": auth_mode(store), "users": [u.__dict__ for u in users]}, args.json,
               "\n".join([f"auth: {auth_mode(store)}"] + [f"{u.name}: {u.role}" for u in users]))
        return 0
    if args.action == "auth":
        if args.name not in AUTH_MODES:
            raise UsageError(f"users auth needs one of {', '.join(AUTH_MODES)}")
        set_auth_mode(store, args.name)
        if args.oidc_default_role:
            store.set_setting(OIDC_DEFAULT_ROLE_SETTING, args.oidc_default_role)
        print(f"auth: {args.name}")
        return 0
    if not args.name:
        raise UsageError(f"users {args.action} needs a NAME")
    if args.action == "remove":
        if not remove_user(path, args.name):
            raise UsageError(f"no user {args.name!r}")
        print(f"removed {args.name}")
        return 0
    if not args.role:
        raise UsageError("users add needs --role")
    password = None if args.no_password else _read_password(args.password_stdin)
    try:
        user = add_user(path, args.name, args.role, password)
    except ValueError as err:
        raise UsageError(str(err)) from err
    print(f"{user.name}: {user.role}" + ("" if password else " (OIDC identity, no password)"))
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise UsageError("the passwords differ")
    return first


# ------------------------------------------------------------------ parser

_MAX_COUNT = 10_000_000  # no count flag means more than this; larger is a typo or an attack


def _whole_number(text: str, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high``, or argparse's usage error (exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is not between {low:,} and {high:,}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: a whole number from 1 to `_MAX_COUNT`."""
    return _whole_number(text, 1, _MAX_COUNT)


def _count(text: str) -> int:
    """argparse type: a whole number from 0 to 100 (rounds of a repeated step)."""
    return _whole_number(text, 0, 100)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


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
    p.add_argument("--collection", help="folder of images to search (dense scan of every image)")
    p.add_argument("--project", help="search a project's images: region index first, then the dense scan")
    p.add_argument("--exact", action="store_true", help="with --project: dense scan of every image, no index")
    p.add_argument("--candidates", type=_positive_int, help="with --project: images the dense scan re-scores (default 150)")
    p.add_argument("--model", help="backbone name or checkpoint path (default effnet-lite0; a project's active model)")
    p.add_argument("--top-k", type=_positive_int, default=20)
    p.add_argument("--rerank", action="store_true", help="re-rank the top hits by the discovery score")
    p.add_argument("--rerank-top", type=_positive_int, default=50, help="how many top hits to re-rank")
    p.add_argument("--no-mirror", action="store_true", help="do not also search the query's mirror image")

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
    p.add_argument("--images", type=_positive_int, default=60, help="number of images")
    p.add_argument("--sources", type=_positive_int, default=4,
                   help="sources of distinct house look (manuscript, print album, photo archive...); 1 = one style")

    p = add("ingest", "add images, IIIF manifests, VIA files and metadata to a project", project=True)
    p.add_argument("paths", nargs="*", help="folders, image files, IIIF manifests (file or URL), VIA files")
    p.add_argument("--metadata", help="CSV/TSV of metadata joined by file name")
    p.add_argument("--annotations", action="append", help="attach a ground-truth file for evaluation")
    p.add_argument("--max-pixels", type=int, help="the project's pixel limit per image, stored in the "
                   "project (default 178956970, PIL's decompression-bomb threshold)")
    p.add_argument("--download-deadline", type=_positive_float, default=120.0,
                   help="seconds a whole download (manifest or image) may take")
    p.add_argument("--max-download-mb", type=_positive_float, default=256.0, help="largest image download, in MiB")

    p = add("discover", "discover repeated details across the project's images", model=True, project=True)
    p.add_argument("--model", help="model id or checkpoint (default: the project's active model)")
    p.add_argument("--pairs", default="knn", choices=["knn", "all"])
    p.add_argument("--k", type=_positive_int, default=20, help="neighbours per image in the shortlist")
    p.add_argument("--expand", type=_count, default=1,
                   help="rounds of two-hop candidates: image pairs that found links chain through a third image "
                        "are verified too (0: off)")
    p.add_argument("--expand-k", type=_positive_int, default=10,
                   help="two-hop candidates kept per image, strongest first")
    p.add_argument("--groups", default="look", choices=["look", "collection", "none"],
                   help="cap an image's shortlist neighbours from its own look-alike group (look: by appearance; "
                        "collection: by metadata; none: no cap)")
    p.add_argument("--min-score", type=float, help="discovery score threshold for links")
    p.add_argument("--graph", default="paper", choices=["paper", "strict"], help="correspondence graph mode")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="pairs verified together")
    p.add_argument("--mirror", default="image", choices=["image", "flip", "off"],
                   help="mirrored copies: features of the flipped image, flipped feature maps, or none")
    p.add_argument("--masks", default="features", choices=["features", "structure", "off"],
                   help="shared-detail masks of found links")
    p.add_argument("--no-style", action="store_true", help="skip the style map")
    p.add_argument("--agreement", default="structure", choices=["structure", "off"],
                   help="weigh each link by how well its two regions agree once finely aligned, or keep "
                        "verification's score")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where features and pair verification run: this process, or a Ray cluster")
    p.add_argument("--address", help="with --executor ray: the cluster to join ('auto': the one `ray start` "
                   "made on this node); default: a Ray instance inside this process")
    p.add_argument("--workers", type=_positive_int, help="with --executor ray: actors per stage "
                   "(default: the cluster's CPUs)")

    p = add("train", "a training round: fine-tune on mined pairs, discovery links and expert verdicts", model=True, project=True)
    p.add_argument("--steps", "--iterations", dest="steps", type=_positive_int,
                   help="Adam steps of the round (default: engine.train.TrainConfig's; authors' code: 50 per mining "
                        "round, ~15k in all)")
    p.add_argument("--minutes", type=float, help="time budget of the steps; the round stops at whichever comes first")
    p.add_argument("--sources", default="mined,expert",
                   help="mined, discovery, expert (comma-separated); discovery links are weak positives, off by default")
    p.add_argument("--freeze", default="last-stage", choices=["last-stage", "none"],
                   help="train only the last stage on the cached frozen trunk (default), or every layer")
    p.add_argument("--from", dest="from_model", help="model to start from (default: the active model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-discover", action="store_true", help="skip re-discovery with the new model")
    p.add_argument("--no-gate", action="store_true",
                   help="make the new model active even when it did not validate on the round's held-out pairs and links")

    p = add("export", "export confirmed links (or all verdicts)", project=True)
    p.add_argument("--format", required=True, choices=["csv", "json", "w3c", "iiif", "training"])
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--all-verdicts", action="store_true", help="every verdict, not only confirmed links")

    p = add("app", "serve the review app", project=True)
    p.add_argument("--port", type=_positive_int, default=8501)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--projects", help="a folder: the app may also open the .duckdb files under it")
    p.add_argument("--auth", choices=["none", "local", "oidc"],
                   help="sign-in for every project this app opens (default: the project's own setting)")

    p = add("users", "the project's users and its sign-in mode", project=True)
    p.add_argument("action", choices=["add", "remove", "list", "auth"])
    p.add_argument("name", nargs="?", help="user name (add, remove) or mode none/local/oidc (auth)")
    p.add_argument("--role", choices=["viewer", "annotator", "adjudicator", "admin"])
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--no-password", action="store_true", help="an OIDC identity: role only")
    p.add_argument("--oidc-default-role", choices=["viewer", "annotator", "adjudicator", "admin"],
                   help="with `auth oidc`: the role of identities not in the users file")
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
