"""The review/retrain loop on the demo collection, scripted: does expert review make the model better?

    python -m benchmarks.loop [--device auto|cpu|cuda] [--small] [--rounds 3] [--verdicts-per-round 50]
                              [--steps N] [--minutes M] [--lr X] [--batch-pairs N] [--expert-ratio R] [--images N]
                              [--anchor-weight A] [--validation-fraction F] [--[no-]gate] [--mine-with root|parent]
                              [--expert-levels all|0,1,2] [--expert-inliers exact|near|off] [--strategy score|uncertainty|coverage] [--[no-]rediscover] [--base DEMO_DIR]
                              [--rejected-weight W] [--rejected-positive view|none] [--matched-negatives K]
                              [--arms mined+expert,mined,expert] [--out DIR] [--threads 1] [--seed 0]

Builds the demo collection (:mod:`hitl.demo`) with its ground truth attached, discovers
repeated details with the ImageNet default model, then runs three arms from fresh copies
of that project, with the same seed:

* ``mined+expert``: training rounds learn from self-mined pairs and expert verdicts;
* ``mined``: self-supervised, mined pairs alone (no verdict);
* ``expert``: expert verdicts alone.

In every arm a simulated expert answers the review queue from the ground truth before
each round (``--verdicts-per-round`` links, confirm true ones, reject false ones), so the
held-out verdicts that measure link AP exist in every arm; only what training learns
from differs. A link is true when each of its boxes overlaps a ground-truth copy of the
same motif (IoU above 0.3, or the box's centre inside the copy). Each round is one
:func:`hitl.rounds.run_round`: measure, train, re-discover with the new model (unless
``--no-rediscover``: the expert then keeps reviewing the first discovery's queue), measure.

Prints, per arm and round: verdicts given so far, one-shot mAP on the ground truth, and
on the held-out verdicts the AP of the discovery score and the recall of confirmed links
at the default threshold (round 0 is the ImageNet model). The held-out set grows with
the verdicts, so compare link AP within a round (the progress lines print before -> after).
With re-discovery, the DISCOVERY quality of every round's model follows, per arm
(:mod:`benchmarks.discovery_rounds`): links, pair precision and recall at the default
threshold (``hitl.discover.DEFAULT_MIN_SCORE``) and at equal link counts (the top 100 ... 600 links by score).

``--small`` (see :func:`small_config`) shrinks the collection, the features and the
training so that the whole benchmark runs in about 25 minutes on two shared CPU cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from benchmarks.discovery_rounds import format_rows, measure_models
from db.records import CONFIRM, REJECT, Link
from db.store import Store
from engine.features import FeatureConfig
from engine.mining import MiningConfig
from engine.train import IterationLog, TrainConfig
from engine.trunk_cache import trunk_inputs
from hitl.demo import DemoConfig, build_demo
from hitl.discover import DEFAULT_MIN_SCORE, DiscoverConfig, run_discovery
from hitl.ingest import ingest_paths
from hitl.positive_precision import Copy, ground_truth_copies, motifs_at
from hitl.positives import INLIER_MODES, REJECTED_POSITIVES, ExpertPairConfig
from hitl.project import ProjectPaths, load_model
from hitl.queue import STRATEGIES, next_links
from hitl.rounds import RoundConfig, RoundReport, SourceWeights, run_round

PROJECT = "artminer.duckdb"
ANNOTATOR = "simulated-expert"
ARMS = {"mined+expert": ("mined", "expert"), "mined": ("mined",), "expert": ("expert",)}


@dataclass(frozen=True)
class LoopConfig:
    rounds: int = 3
    verdicts_per_round: int = 50  # links the simulated expert answers before each round
    strategy: str = "score"  # review queue order (hitl.queue.STRATEGIES); the app's default
    images: int = 60  # demo collection size (the CLI's `artminer demo` default)
    motifs: int = 8  # repeated motif classes in the demo
    demo: DemoConfig = field(default_factory=DemoConfig)  # the demo's difficulty knobs
    seed: int = 0  # demo, held-out split and training: the same in every arm
    rediscover: bool = True  # discover again with each new model (the expert then reviews its links)
    gate: bool = True  # hitl.rounds.RoundConfig.gate: activate only models that validated
    mine_with: str = "root"  # hitl.rounds.RoundConfig.mine_with
    expert_pairs: ExpertPairConfig = field(default_factory=ExpertPairConfig)  # hitl.rounds.RoundConfig.expert_pairs
    weights: SourceWeights = field(default_factory=SourceWeights)  # hitl.rounds.RoundConfig.weights
    # torch CPU threads (0: torch's default). Two threads on two cores shared with other
    # work ran 3-20x slower than one here, waiting at OpenMP barriers.
    threads: int = 1
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def small_config() -> LoopConfig:
    """Settings that fit two busy CPU cores (see the module doc for what each costs).

    30 demo images; features with a 24-cell reference side over 5 scales (the one-shot
    query keeps its 8 cells, so a much smaller side loses the demo's smaller copies);
    the paper's squares scaled to the map (verification 6, positives 6 cells apart: at
    10 and 12 they span half of a 24-cell map and the corners land off the motif);
    re-discovery skipped: the held-out metrics recompute what they need with each model.
    """
    features = FeatureConfig(max_side=24, n_scales=5)
    mining = MiningConfig(n_proposals=500, verification_size=6, positive_square=6)
    train = TrainConfig(steps=200, features=features, mining=mining)
    return LoopConfig(images=30, rediscover=False, features=features, train=train)


# ---------------------------------------------------------------- the simulated expert


def is_true_link(link: Link, truth: dict[str, list[Copy]]) -> bool:
    """True when both boxes lie on copies of one same motif."""
    return bool(motifs_at(link.box_a, truth.get(link.image_a, [])) & motifs_at(link.box_b, truth.get(link.image_b, [])))


def review(store: Store, truth: dict[str, list[Copy]], n: int, strategy: str) -> tuple[int, int]:
    """The simulated expert answers the first ``n`` links of the latest discovery's queue;
    returns (confirmed, rejected)."""
    model_id = store.list_runs(kind="discovery", status="done")[-1].model_id  # the latest discovery's links
    queue = next_links(store, strategy, threshold=DEFAULT_MIN_SCORE, limit=n, model_id=model_id)
    verdicts = [CONFIRM if is_true_link(lk, truth) else REJECT for lk in queue]
    for link, verdict in zip(queue, verdicts):
        store.add_verdict(link.link_id, verdict, ANNOTATOR, note="benchmarks.loop: from the ground truth")
    return verdicts.count(CONFIRM), verdicts.count(REJECT)


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class Row:
    arm: str
    round: int
    verdicts: int  # given so far in this arm
    confirmed: int
    metrics: dict  # hitl.rounds.measure's figures of the model active after the round
    seconds: float
    activated: bool = True  # False: the round's model did not validate (hitl.rounds.validated)


def prepare_base(folder: Path, config: LoopConfig, device: str, copy_from: Path | None = None) -> Path:
    """The demo project, discovered with the ImageNet default; reused when already there.

    ``copy_from``: a ready discovered demo folder (``artminer demo --out DIR``) copied
    instead of building one (its feature cache comes along).
    """
    project = folder / PROJECT
    if copy_from is not None and not project.exists():
        shutil.copytree(copy_from, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.lock"))
    folder.mkdir(parents=True, exist_ok=True)
    with Store(project) as store:
        paths = ProjectPaths(project.resolve())
        pin_threads(config.threads)
        if not any(r.status == "done" for r in store.list_runs(kind="discovery")):
            if store.count_images() == 0:
                demo = build_demo(folder, config.seed, config.images, config.motifs, config.demo, progress=False)
                ingest_paths(store, [demo.images_dir], metadata_csv=demo.metadata, progress=False)
                store.attach_annotations(demo.ground_truth, "artminer", label="demo ground truth")
            run_discovery(store, paths, DiscoverConfig(features=config.features), backbone=load_model(store, None, device),
                          progress=False)
        if config.train.freeze == "last-stage":  # every arm's copy then reads the frozen trunk's cache
            images = store.list_images()
            trunk_inputs(load_model(store, None, device), [(img.image_id, img.path) for img in images], config.features,
                         paths.features, {img.image_id: img.sha256 for img in images}, progress=False)
    return project


def pin_threads(threads: int) -> None:
    """Set torch's CPU threads again: drawing the map (UMAP through numba) resets the OpenMP
    library that torch shares to all cores, so a setting made once at start does not hold."""
    if threads > 0:
        torch.set_num_threads(threads)


def run_arm(base: Path, folder: Path, arm: str, config: LoopConfig, device: str) -> list[Row]:
    """One arm from a fresh copy of the discovered base project (its feature cache included)."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(base.parent, folder)
    round_config = RoundConfig(sources=ARMS[arm], seed=config.seed, rediscover=config.rediscover, gate=config.gate,
                               mine_with=config.mine_with, train=config.train, expert_pairs=config.expert_pairs,
                               weights=config.weights)
    rows: list[Row] = []
    given = confirmed = 0
    with Store(folder / PROJECT) as store:
        paths = ProjectPaths((folder / PROJECT).resolve())
        truth = ground_truth_copies(store)
        for r in range(1, config.rounds + 1):
            start = time.perf_counter()
            pin_threads(config.threads)
            yes, no = review(store, truth, config.verdicts_per_round, config.strategy)
            given, confirmed = given + yes + no, confirmed + yes
            logs: list[IterationLog] = []
            report = run_round(store, paths, round_config, device=device, show_progress=False,
                               progress=lambda log, _total, logs=logs: logs.append(log))
            if r == 1:
                rows.append(Row(arm, 0, given, confirmed, report.before, 0.0))
            # the model active after the round: a round that did not validate keeps its parent
            rows.append(Row(arm, r, given, confirmed, report.active, time.perf_counter() - start, report.activated))
            print(_progress_line(rows[-1], report, logs), flush=True)
    return rows


def _progress_line(row: Row, report: RoundReport, logs: Sequence[IterationLog]) -> str:
    before, after = report.before, report.after
    nan = float("nan")
    step = sum(log.step_s for log in logs)
    sources = ", ".join(f"{name} {p['pairs']}" + (f" @ {p['precision']:.2f}" if "precision" in p else "")
                        for name, p in report.positives.items() if "pairs" in p)
    pairs = sum(log.n_used_mined + log.n_used_expert for log in logs) / max(1, len(logs))
    expert = sum(log.n_used_expert for log in logs) / max(1, len(logs))
    loss = [log.loss for log in logs] or [nan]
    return (f"[{row.arm} round {row.round}] {row.verdicts} verdicts ({row.confirmed} confirmed); "
            f"positives {sources or 'none'}; steps {step:.0f} s ("
            f"{len(logs)} steps, {pairs:.0f} pairs/step of which {expert:.0f} expert/discovery, "
            f"loss {loss[0]:.3f} -> {loss[-1]:.3f}); "
            f"mAP {before.get('oneshot_map', nan):.3f} -> {after.get('oneshot_map', nan):.3f}, "
            f"held-out link AP {before.get('heldout_link_ap', nan):.3f} -> {after.get('heldout_link_ap', nan):.3f}; "
            f"{'activated' if report.activated else 'NOT activated'} ({report.gate}); round {row.seconds:.0f} s")


def format_table(rows: Sequence[Row]) -> str:
    """One line per arm and round: verdicts so far, mAP, held-out link AP, recall."""
    header = f"{'arm':<13} {'round':>5} {'verdicts':>8} {'confirmed':>9} {'one-shot mAP':>12} " \
             f"{'held-out AP':>11} {'recall':>6} {'held-out':>8} {'seconds':>7} {'new model':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        m = row.metrics
        lines.append(f"{row.arm:<13} {row.round:>5} {row.verdicts:>8} {row.confirmed:>9} "
                     f"{_fmt(m.get('oneshot_map')):>12} {_fmt(m.get('heldout_link_ap')):>11} "
                     f"{_fmt(m.get('heldout_confirmed_recall')):>6} {m.get('heldout_links', 0):>8} {row.seconds:>7.0f} "
                     f"{'-' if row.round == 0 else 'active' if row.activated else 'rejected':>10}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_loop(out: Path, config: LoopConfig, arms: Sequence[str], device: str, copy_from: Path | None = None) -> list[Row]:
    """The whole benchmark under ``out``: base project, then each arm in its own folder."""
    start = time.perf_counter()
    base = prepare_base(out / "base", config, device, copy_from)
    print(f"base project ready in {time.perf_counter() - start:.0f} s: {base}", flush=True)
    rows: list[Row] = []
    for arm in arms:
        rows += run_arm(base, out / arm.replace("+", "-"), arm, config, device)
    return rows


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, LoopConfig]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--verdicts-per-round", type=int, default=50)
    parser.add_argument("--steps", type=int, help="Adam steps per round (default: TrainConfig's)")
    parser.add_argument("--minutes", type=float, help="time budget of each round's steps")
    parser.add_argument("--batch-pairs", type=int, help="feature pairs per gradient step (default: TrainConfig's)")
    parser.add_argument("--expert-ratio", type=float,
                        help="share of each step's pairs drawn from expert/discovery pairs (default: TrainConfig's)")
    parser.add_argument("--expert-levels", help="levels expert pairs' anchors come from: 'all' or e.g. '0,1,2' "
                        "(default: ExpertPairConfig's)")
    parser.add_argument("--expert-inliers", choices=INLIER_MODES,
                        help="where links with inlier points put their cell pairs (default: ExpertPairConfig's)")
    parser.add_argument("--rejected-weight", type=float, help="loss weight of rejected links' pairs (default: SourceWeights')")
    parser.add_argument("--rejected-positive", choices=REJECTED_POSITIVES,
                        help="a rejected link's positive: the anchor's own cell one scale away, or none (default: ExpertPairConfig's)")
    parser.add_argument("--matched-negatives", type=int,
                        help="negative slots of a rejected anchor given to its matched cell (default: ExpertPairConfig's)")
    parser.add_argument("--anchor-weight", type=float, help="L2-SP weight toward the ImageNet start (default: TrainConfig's)")
    parser.add_argument("--validation-fraction", type=float, help="image pairs held out for early stopping (default: TrainConfig's)")
    parser.add_argument("--mine-with", default="root", choices=["root", "parent"],
                        help="whose features mining verifies with (hitl.rounds.RoundConfig.mine_with)")
    parser.add_argument("--gate", action=argparse.BooleanOptionalAction, default=True,
                        help="activate a round's model only when it validated (default: yes)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 1e-5, the paper's)")
    parser.add_argument("--images", type=int, help="demo collection size (default 60, --small 30)")
    parser.add_argument("--rediscover", action=argparse.BooleanOptionalAction,
                        help="discover again with each new model (default: yes, --small: no)")
    parser.add_argument("--strategy", default="score", choices=STRATEGIES, help="review queue order")
    parser.add_argument("--small", action="store_true", help="CPU-sized features and training (see small_config)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--out", help="working folder, kept (default: a temporary one, removed)")
    parser.add_argument("--base", help="a ready discovered demo folder to start from (default: build one)")
    parser.add_argument("--threads", type=int, default=LoopConfig.threads, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        parser.error(f"--arms must name some of {', '.join(ARMS)}, got {args.arms!r}")
    for name in ("rounds", "verdicts_per_round", "images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.arms = arms
    config = small_config() if args.small else LoopConfig()
    train = config.train
    if args.steps is not None:
        if args.steps < 1:
            parser.error("--steps must be >= 1")
        train = replace(train, steps=args.steps)
    if args.minutes is not None:
        if args.minutes <= 0:
            parser.error("--minutes must be > 0")
        train = replace(train, minutes=args.minutes)
    if args.lr is not None:
        train = replace(train, lr=args.lr)
    if args.batch_pairs is not None:
        train = replace(train, batch_pairs=args.batch_pairs)
    if args.anchor_weight is not None:
        train = replace(train, anchor_weight=args.anchor_weight)
    if args.expert_ratio is not None:
        if not 0.0 <= args.expert_ratio <= 1.0:
            parser.error("--expert-ratio must be in [0, 1]")
        train = replace(train, expert_ratio=args.expert_ratio)
    if args.validation_fraction is not None:
        train = replace(train, validation_fraction=args.validation_fraction)
    train = replace(train, seed=args.seed)
    config = replace(config, rounds=args.rounds, verdicts_per_round=args.verdicts_per_round, strategy=args.strategy,
                     seed=args.seed, train=train, gate=args.gate, mine_with=args.mine_with)
    if args.images is not None:
        config = replace(config, images=args.images)
    if args.expert_levels is not None:
        try:
            levels = None if args.expert_levels == "all" else tuple(int(v) for v in args.expert_levels.split(","))
        except ValueError:
            parser.error(f"--expert-levels must be 'all' or comma-separated levels, got {args.expert_levels!r}")
        config = replace(config, expert_pairs=replace(config.expert_pairs, anchor_levels=levels))
    if args.expert_inliers is not None:
        config = replace(config, expert_pairs=replace(config.expert_pairs, inliers=args.expert_inliers))
    if args.rejected_positive is not None:
        config = replace(config, expert_pairs=replace(config.expert_pairs, rejected_positive=args.rejected_positive))
    if args.matched_negatives is not None:
        if not 0 <= args.matched_negatives <= config.train.n_negatives:
            parser.error(f"--matched-negatives must be in [0, {config.train.n_negatives}]")
        config = replace(config, expert_pairs=replace(config.expert_pairs, matched_negatives=args.matched_negatives))
    if args.rejected_weight is not None:
        if args.rejected_weight < 0:
            parser.error("--rejected-weight must be >= 0")
        config = replace(config, weights=replace(config.weights, rejected=args.rejected_weight))
    if args.rediscover is not None:
        config = replace(config, rediscover=args.rediscover)
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    config = replace(config, threads=args.threads)
    return args, config


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    t = config.train
    print(f"loop: {config.images} demo images, features {config.features.sides()}, {config.rounds} rounds x "
          f"{config.verdicts_per_round} verdicts ({config.strategy} first), {t.steps} steps/round"
          f"{f' (at most {t.minutes:g} min)' if t.minutes else ''}, lr {t.lr:g}, freeze {t.freeze}, "
          f"{t.mining.n_proposals} proposals, {t.batch_pairs} pairs/step ({t.expert_ratio:g} expert), anchor {t.anchor_weight:g}, "
          f"validation {t.validation_fraction:g}, expert pairs {config.expert_pairs.inliers} at levels {config.expert_pairs.anchor_levels or 'all'}, "
          f"rejected links: positive {config.expert_pairs.rejected_positive}, matched negatives {config.expert_pairs.matched_negatives}, "
          f"weight {config.weights.rejected:g}, gate {'on' if config.gate else 'off'}, mining with {config.mine_with}, "
          f"re-discovery {'on' if config.rediscover else 'off'}, arms {', '.join(args.arms)}", flush=True)
    start = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="artminer-loop-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_loop(out, config, args.arms, args.device, Path(args.base) if args.base else None)
        print()
        print(format_table(rows))
        if config.rediscover:  # measured before a temporary folder goes
            for arm in args.arms:
                folder = out / arm.replace("+", "-")
                print(f"\ndiscovery quality, arm {arm} (python -m benchmarks.discovery_rounds {folder}):")
                print(format_rows(measure_models(folder)))
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
