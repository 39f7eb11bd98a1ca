"""A training round: positives from every source -> a new model, measured before and after.

One round (``artminer train``):

1. split reviewed links once and for all into train (80%) and held-out (20%) sides (a
   fresh project has none: its first round is self-supervised and needs no verdict);
2. measure the parent model (one-shot mAP on attached annotations, held-out link AP);
3. collect the round's positives, in order of evidence, each source with its weight:
   expert-confirmed links and clusters (rejected links give negatives only), unrejected
   discovery links above ``link_min_score``, and pairs mined once with the parent's
   features (paper §3.1) among each image's shortlist neighbours; with ground truth
   attached, the precision of each source is printed and stored with the round;
4. fine-tune from the parent: many small steps (:func:`engine.train.train`), only the
   last stage on the cached frozen trunk by default;
5. record the new model with its lineage, refresh the collection's features with it
   (last stage only) and measure it on the same held-out evaluation;
6. make it active only when it validated (``RoundConfig.gate``): its held-out pairs' loss
   fell during training (:func:`engine.train.train`'s early stopping) and its held-out
   link AP, where reviewed links are held out, did not fall. A round that fails says so in
   the log and its record (``activated: false`` and why), and the next round starts from
   the same parent again; an activated model re-runs discovery.

Every round is anchored to the root of the lineage (the ImageNet model): the L2-SP
penalty of :class:`engine.train.TrainConfig` pulls toward its weights, not the parent's,
so that rounds do not compound drift.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from db.records import CONFIRM, REJECT, UNREVIEWED, UNSURE
from db.store import Store
from engine.backbone import Backbone, load_checkpoint
from engine.detect import FeatureBank
from engine.features import CachedPyramids, FeatureCache, FeatureConfig
from engine.images import content_hash, load_rgb
from engine.mining import MiningStats, PairBatch, mine_pairs, proposal_weights
from engine.shortlist import ShortlistConfig, global_descriptors, knn_graph
from engine.texture import TextureConfig
from engine.train import IterationLog, TrainConfig, TrainResult, iteration_generator, train
from engine.trunk_cache import (
    TrunkInputs,
    cached_bank,
    fill_feature_cache,
    split_trunk,
    trunk_inputs,
)
from engine.verify import discovery_score
from hitl.discover import DEFAULT_MIN_SCORE, DiscoverConfig, lineage_root, run_discovery
from hitl.evaluation import evaluate_oneshot, project_queries
from hitl.oneshot import load_project_collection
from hitl.positive_precision import ground_truth_copies, precision_by_source
from hitl.positives import ExpertPairConfig, cluster_matches, expert_pairs
from hitl.progress import STOPPED_PREFIX
from hitl.project import ProjectPaths, load_model
from hitl.texture_counts import kept_collection_counts

SOURCES = ("mined", "discovery", "expert")
# Discovery links are off by default: on the demo their cell pairs were 9-28 % right
# (boxes larger than the motif, false links) and adding them lowered a round's gain
# (mAP 0.542 -> 0.518); `--sources mined,discovery,expert` turns them on.
DEFAULT_SOURCES = ("mined", "expert")
DEFAULT_STEPS = TrainConfig.steps  # a round's Adam steps, for the app (pages do not import engine)
PHASES = ("loading the parent model", "measuring the parent model", "mining the training pairs", "training",
          "refreshing the collection's features", "measuring the new model", "re-discovering with the new model")


class RoundStopped(KeyboardInterrupt):
    """The round was asked to stop (SIGTERM from the app's Stop button or ``kill``)."""


class RoundRefused(ValueError):
    """A round that cannot teach; the message says what is missing."""


@dataclass(frozen=True)
class SourceWeights:
    """Weight of each source's pairs in the loss, in order of evidence (not in the paper)."""

    expert: float = 1.0  # an expert looked at the link
    discovery: float = 0.5  # verified by RANSAC with a discovery score above the threshold
    mined: float = 0.25  # verified by ring votes only
    # An expert rejected the link: its hard negatives (hitl.positives). One round of the loop
    # with re-discovery (README "Rounds that improve discovery"): at 1, the top 600 links'
    # pair precision / recall 0.191 / 0.645 against 0.167 / 0.602 at 0 (no rejection signal);
    # at 3 (with 10 matched-cell slots) one-shot mAP fell to 0.544.
    rejected: float = 1.0


@dataclass(frozen=True)
class RoundConfig:
    sources: tuple[str, ...] = DEFAULT_SOURCES  # what the model learns from (SOURCES lists all)
    holdout_fraction: float = 0.2  # reviewed links kept out of training, fixed once drawn
    seed: int = 0
    rediscover: bool = True  # run discovery with the new model (the map and links follow it)
    # Discovery links at or above this score that nobody rejected are weak positives
    # (the clustering threshold of hitl.discover, on the project's discovery-score scale).
    link_min_score: float = DEFAULT_MIN_SCORE
    shortlist_k: int = 20  # mining searches each image's k shortlist neighbours (hitl.discover's k)
    # Whose features mining verifies with: "root", the lineage's ImageNet model (needs the
    # frozen trunk's cache), or "parent", the model being fine-tuned (the paper). A model
    # tuned on mined pairs verifies its own mistakes: on the multi-source demo mined pairs
    # fell from 88 @ 0.74 precision (round 1) to 368 @ 0.32 (round 2) and mAP 0.565 -> 0.533.
    mine_with: str = "root"
    weights: SourceWeights = field(default_factory=SourceWeights)
    # How confirmed/rejected (and discovery) links become cell pairs (hitl.positives); its
    # n_negatives is replaced by the training's.
    expert_pairs: ExpertPairConfig = field(default_factory=ExpertPairConfig)
    # Activate the new model only when it validated on the round's own held-out signal
    # (module doc, step 6); False activates every round, as before this guard.
    gate: bool = True
    # ... and a held-out link AP that falls by more than this fails it. A few dozen held-out
    # links make AP noisy: on the multi-source demo (13-20 held-out links) a mined-only
    # round that raised one-shot mAP 0.554 -> 0.568 moved link AP 0.250 -> 0.236, and
    # rounds that moved mAP by under 0.01 moved it by up to -0.016. 0.02 (was 0.05): a
    # self-supervised round at 300 steps and anchor 0.03 that dropped mAP 0.570 -> 0.508
    # moved it 0.490 -> 0.447, and 0.05 let it through.
    gate_ap_tolerance: float = 0.02
    train: TrainConfig = field(default_factory=TrainConfig)  # its `features` serve the whole round

    def params(self) -> dict:
        return asdict(self)


@dataclass
class RoundReport:
    round_id: int
    parent: str
    new_model: str
    before: dict
    after: dict
    seconds: float
    positives: dict = field(default_factory=dict)  # per source: pairs, precision (with ground truth)
    steps: int = 0
    activated: bool = True  # False: the new model did not validate and the parent stays active
    gate: str = ""  # why it was (not) activated

    @property
    def active(self) -> dict:
        """The figures of the model active after the round."""
        return self.after if self.activated else self.before


def holdout_side(link_id: int, fraction: float, seed: int) -> str:
    """A link's side, a pure function of its id: stable across rounds and processes."""
    digest = hashlib.sha256(f"{seed}:{link_id}".encode()).digest()
    return "holdout" if int.from_bytes(digest[:4], "big") / 2**32 < fraction else "train"


def reviewed_links(store: Store, config: RoundConfig) -> tuple[list, list]:
    """(train, held-out) links with a final confirm/reject verdict, with their inlier
    points (expert pairs are anchored on them, :mod:`hitl.positives`); records new sides."""
    reviewed = store.list_links(status=[CONFIRM, REJECT], inliers=True)
    known = store.link_split()
    new = {lk.link_id: holdout_side(lk.link_id, config.holdout_fraction, config.seed)
           for lk in reviewed if lk.link_id not in known}
    if new:
        store.record_split(new)
    sides = {**known, **new}
    return ([lk for lk in reviewed if sides[lk.link_id] == "train"],
            [lk for lk in reviewed if sides[lk.link_id] == "holdout"])


def measure(store: Store, paths: ProjectPaths, backbone: Backbone, heldout: list, min_score: float,
            progress: bool = False, features: FeatureConfig = FeatureConfig()) -> dict:
    """The held-out evaluation of one model (see the module doc)."""
    out: dict = {"model": backbone.model_id}
    queries = project_queries(store)
    collection = load_project_collection(store, paths, backbone, progress, features)
    if queries:
        known = _known_oneshot(store, backbone.model_id, len(queries))
        if known is None:
            res = evaluate_oneshot(backbone, collection, queries, rerank=False, progress=progress)["cosine"]
            known = {"oneshot_map": res.mean_ap, "oneshot_top1": res.top1, "oneshot_queries": len(queries)}
        out.update(known)
    labels = [lk.status == CONFIRM for lk in heldout]
    if heldout and any(labels) and not all(labels):
        index = {image_id: i for i, image_id in enumerate(collection.bank.image_ids)}
        device = collection.bank.levels[0].device
        scores = [discovery_score(collection.bank.pyramid(index[lk.image_a]), collection.bank.pyramid(index[lk.image_b]),
                                  lk.box_a, device=device)[0] for lk in heldout]
        out["heldout_link_ap"] = float(average_precision_score(labels, scores))
        confirmed = [s for s, y in zip(scores, labels) if y]
        out["heldout_confirmed_recall"] = float(np.mean([s >= min_score for s in confirmed]))
        out["heldout_links"] = len(heldout)
    return out


def _known_oneshot(store: Store, model_id: str, n_queries: int) -> dict | None:
    """The one-shot figures a finished round already measured for this model on as many
    queries (a round's "after" is the next round's "before": one evaluation, not two)."""
    for r in reversed(store.list_rounds()):
        after = r.metrics.get("after", {}) if r.status == "done" else {}
        if after.get("model") == model_id and after.get("oneshot_queries") == n_queries and "oneshot_map" in after:
            return {k: after[k] for k in ("oneshot_map", "oneshot_top1", "oneshot_queries")}
    return None


def run_round(store: Store, paths: ProjectPaths, config: RoundConfig = RoundConfig(), from_model: str | None = None,
              device: str = "auto", progress: Callable[[IterationLog, int], None] | None = None,
              show_progress: bool = True, log: Callable[[str], None] | None = None,
              on_phase: Callable[[int, int, str], None] | None = None) -> RoundReport:
    """One training round (module doc). Raises :class:`RoundRefused` before any work when
    there is nothing to learn from. ``log`` receives one line per stage (default: none).

    ``on_phase(index, total, name)`` is called as each of the round's `PHASES` starts
    (the app's log shows it above the step's progress bar).
    """
    def phase(index: int) -> None:
        if on_phase is not None:
            on_phase(index + 1, len(PHASES), PHASES[index])

    start = time.perf_counter()

    def say(line: str) -> None:  # stage lines with the time since the round started
        if log is not None:
            log(f"[{time.perf_counter() - start:5.0f} s] {line}")

    if config.mine_with not in ("root", "parent"):
        raise RoundRefused(f"mine_with must be root or parent, got {config.mine_with!r}")
    unknown = set(config.sources) - set(SOURCES)
    if unknown or not config.sources:
        raise RoundRefused(f"--sources must name some of {', '.join(SOURCES)}, got {', '.join(config.sources) or 'none'}")
    train_links, heldout = reviewed_links(store, config)
    confirmed_clusters = [c for c in store.list_clusters(status=CONFIRM)]
    _check_round(store, config, train_links, confirmed_clusters)

    phase(0)
    parent = load_model(store, from_model, device)
    round_id = _resume_or_start(store, parent.model_id, config)
    try:
        features = config.train.features
        phase(1)
        before = measure(store, paths, parent, heldout, DEFAULT_MIN_SCORE, show_progress, features)
        say(f"round {round_id}: parent {parent.model_id} measured: {_figures(before)}")
        store.update_round(round_id, metrics={"before": before})
        phase(2)
        source, bank, hashes = _training_source(store, paths, parent, config.train, show_progress)
        miner = _mining_bank(store, paths, parent, source, hashes, config, device)
        weights = _proposal_weights(paths, lineage_root(store, parent.model_id) if miner else parent.model_id,
                                    miner or bank, hashes, config)
        pairs, mining = round_pairs(store, config, bank, train_links, heldout, confirmed_clusters, round_id, miner,
                                    weights)
        positives = _positives_report(store, pairs, bank, mining)
        say(f"round {round_id}: positives {_positives_line(positives)}")
        store.update_round(round_id, metrics={"before": before, "positives": positives})
        if len(pairs) == 0 or not bool(pairs.positive_mask.any()):
            raise RoundRefused("nothing to learn from: no positive pair was found (mining verified none and no link "
                               "was confirmed or discovered above the threshold)")
        sizes = [tuple(int(v) for v in s) for s in bank.sizes.tolist()]
        phase(3)
        result = train(parent, source, pairs, config.train, paths.checkpoints / f"round-{round_id}",
                       progress=progress, image_sizes=sizes, anchor=_anchor(store, parent, config.train, device))
        say(f"round {round_id}: {result.iterations} steps{' (time budget reached)' if result.stopped_by_time else ''}; "
            f"{_validation_line(result)}")
        new = load_checkpoint(result.model.checkpoint).to(next(parent.parameters()).device)
        store.add_model(new.ref, checkpoint_sha256=content_hash(result.model.checkpoint), round=round_id,
                        config={"round": config.params()})
        phase(4)
        if isinstance(source, TrunkInputs):  # the refresh runs only the last stage
            fill_feature_cache(new, source, paths.features, features, hashes)
        say(f"round {round_id}: new model {new.model_id} saved, its features refreshed")
        phase(5)
        after = measure(store, paths, new, heldout, DEFAULT_MIN_SCORE, show_progress, features)
        say(f"round {round_id}: new model {new.model_id} measured: {_figures(after)}")
        activated, why = (validated(result, before, after, config.gate_ap_tolerance) if config.gate
                          else (True, "not gated (gate off)"))
        if activated:
            store.set_active_model(new.model_id)
        say(f"round {round_id}: new model {'made active' if activated else 'NOT activated, ' + parent.model_id + ' stays active'}: {why}")
        if activated and config.rediscover:
            phase(6)
            run_discovery(store, paths, DiscoverConfig(features=features), backbone=new, progress=show_progress)
        store.update_round(round_id, status="done", new_model=new.model_id,
                           metrics={"after": after, "positives": positives, "steps": result.iterations,
                                    "activated": activated, "gate": why, "validation": list(result.validation),
                                    "best_step": result.best_step, "drift": result.drift})
    except BaseException as err:
        reason = (f"{STOPPED_PREFIX}: {err}" if isinstance(err, RoundStopped)
                  else f"{type(err).__name__}: {err}")
        store.update_round(round_id, status="failed", error=reason)
        raise
    return RoundReport(round_id, parent.model_id, new.model_id, before, after, time.perf_counter() - start,
                       positives, result.iterations, activated, why)


def validated(result: TrainResult, before: dict, after: dict, ap_tolerance: float = 0.0) -> tuple[bool, str]:
    """(activate the new model?, why): only the round's own signal decides, never the
    evaluation annotations: the held-out pairs' loss must have fallen (early stopping kept
    weights past the start) and the held-out link AP, when links are held out, not fallen
    by more than ``ap_tolerance``."""
    if result.improved is False:
        return False, "its held-out pairs' loss did not fall below the start model's"
    ap_before, ap_after = before.get("heldout_link_ap"), after.get("heldout_link_ap")
    if ap_before is not None and ap_after is not None and ap_after < ap_before - ap_tolerance:
        return False, f"its held-out link AP fell ({ap_before:.3f} -> {ap_after:.3f}, tolerance {ap_tolerance:g})"
    parts = ["held-out pairs' loss fell" if result.improved else "no pair held out"]
    if ap_before is not None and ap_after is not None:
        parts.append(f"held-out link AP {ap_before:.3f} -> {ap_after:.3f}")
    return True, ", ".join(parts)


def _validation_line(result: TrainResult) -> str:
    if result.best_step is None:
        return "no pair held out to validate on"
    losses = dict(result.validation)
    return (f"held-out pairs' loss {losses[0 if 0 in losses else min(losses)]:.4f} -> {losses[result.best_step]:.4f} "
            f"(best at step {result.best_step}, kept); drift from the ImageNet weights {result.drift:.3f}")


def _mining_bank(store: Store, paths: ProjectPaths, parent: Backbone, source, hashes: dict[str, str],
                 config: RoundConfig, device: str) -> FeatureBank | None:
    """The features mining verifies with: the lineage root's (ImageNet) when
    ``config.mine_with == "root"`` and the trunk is cached (None: the parent's bank),
    read from the root's feature cache (:func:`engine.trunk_cache.cached_bank`)."""
    root_id = lineage_root(store, parent.model_id)
    if config.mine_with != "root" or root_id == parent.model_id or not isinstance(source, TrunkInputs):
        return None
    return cached_bank(load_model(store, root_id, device), source, paths.features, config.train.features, hashes)


def _proposal_weights(paths: ProjectPaths, model_id: str, bank: FeatureBank, hashes: dict[str, str],
                      config: RoundConfig) -> torch.Tensor | None:
    """Mining's proposal weights from the collection counts kept beside ``model_id``'s
    feature cache (discovery's, :mod:`hitl.texture_counts`; computed and kept when
    missing). None where mining draws no weighted proposals or the bank has no cache
    (``mine_pairs`` then computes them)."""
    mining = config.train.mining
    if "mined" not in config.sources or not mining.texture_proposals or not hashes:
        return None
    pyramids = CachedPyramids(FeatureCache(paths.features, model_id, config.train.features), hashes)
    counts = kept_collection_counts(pyramids, TextureConfig(), bank.image_ids)
    return proposal_weights(bank, mining.proposal_level, counts=[counts[i] for i in bank.image_ids])


def _anchor(store: Store, parent: Backbone, config: TrainConfig, device: str) -> list[torch.Tensor] | None:
    """The L2-SP anchor: the trained tensors' values in the lineage's root (None: the parent is the root)."""
    root_id = lineage_root(store, parent.model_id)
    if root_id == parent.model_id:
        return None
    root = load_model(store, root_id, device)
    trained = split_trunk(root)[1] if config.freeze == "last-stage" else root
    return [p.detach() for p in trained.parameters()]


def _check_round(store: Store, config: RoundConfig, train_links, clusters) -> None:
    """Refuse only what cannot teach; a round with nothing held out is measured on
    annotations when attached, and otherwise only by its positives' figures."""
    has_expert = any(lk.status in (CONFIRM, REJECT) for lk in train_links) or bool(clusters)
    if config.sources == ("expert",) and not has_expert:
        raise RoundRefused("nothing to learn from: no confirmed or rejected link on the training side yet "
                           "(review some links, or add --sources mined,discovery)")
    if store.count_images() < 2:
        raise RoundRefused("nothing to learn from: the project needs at least 2 images")


def _resume_or_start(store: Store, parent: str, config: RoundConfig) -> int:
    """A killed round with the same parent and parameters continues from its checkpoint."""
    params = json.loads(json.dumps(config.params()))  # as stored: tuples come back as lists
    for r in reversed(store.list_rounds()):
        if r.parent_model == parent and r.params == params and r.status in ("running", "failed"):
            store.update_round(r.round_id, status="running")
            return r.round_id
    return store.add_round(parent, config.params())


def _training_source(store: Store, paths: ProjectPaths, parent: Backbone, config: TrainConfig, show_progress: bool):
    """(what steps read, the parent's bank, image hashes): cached trunk inputs for a
    frozen trunk (the bank read from the parent's feature cache), else the images at the
    largest level's resolution."""
    features = config.features
    if config.freeze == "last-stage":
        images = [img for img in store.list_images() if Path(img.path).is_file()]
        hashes = {img.image_id: img.sha256 for img in images}
        inputs, _ = trunk_inputs(parent, [(img.image_id, img.path) for img in images], features, paths.features,
                                 hashes, progress=show_progress)
        return inputs, cached_bank(parent, inputs, paths.features, features, hashes), hashes
    collection = load_project_collection(store, paths, parent, show_progress, features)
    ids = collection.bank.image_ids
    max_pixels = 16 * features.max_side
    images = [torch.from_numpy(load_rgb(collection.paths[i], max_side=max_pixels).copy()).permute(2, 0, 1) for i in ids]
    return images, collection.bank, {}


def shortlist_neighbours(bank: FeatureBank, k: int) -> torch.Tensor:
    """(N, k) each image's k nearest images by regional GeM (the discovery shortlist's)."""
    desc = global_descriptors([bank.pyramid(i) for i in range(len(bank))], ShortlistConfig(k=k))
    neighbours, _ = knn_graph(desc, k, device=bank.levels[0].device)
    return neighbours


def round_pairs(store: Store, config: RoundConfig, bank: FeatureBank, train_links, heldout, clusters,
                round_id: int, mining_bank: FeatureBank | None = None,
                weights: torch.Tensor | None = None) -> tuple[PairBatch, MiningStats | None]:
    """The round's pairs from every source in ``config.sources``, tagged and weighted;
    mined with ``mining_bank`` when given (same images, same order), else ``bank``, and
    proposals drawn by ``weights`` when given (see :func:`engine.mining.mine_pairs`)."""
    ids = bank.image_ids
    index = {image_id: i for i, image_id in enumerate(ids)}
    n_neg = config.train.n_negatives
    parts, stats = [PairBatch.empty(n_neg)], []
    if "expert" in config.sources:
        expert = _expert_batch(train_links, clusters, bank, index, replace(config.expert_pairs, n_negatives=n_neg))
        if expert is not None:  # confirmed pairs come tagged EXPERT, rejected links' REJECTED
            for code, weight in ((PairBatch.EXPERT, config.weights.expert), (PairBatch.REJECTED, config.weights.rejected)):
                parts.append(expert.select(expert.source == code).tagged(code, weight))
    if "discovery" in config.sources:
        held = {lk.link_id for lk in heldout}
        links = [lk.match for lk in _latest_links(store, config.link_min_score)
                 if lk.link_id not in held and lk.image_a in index and lk.image_b in index]
        if links:
            batch = expert_pairs(links, [], bank, replace(config.expert_pairs, n_negatives=n_neg), image_index=index)
            parts.append(batch.tagged(PairBatch.DISCOVERY, config.weights.discovery))
    if "mined" in config.sources:
        neighbours = shortlist_neighbours(bank, config.shortlist_k)
        generator = iteration_generator(config.seed, round_id)
        mined = mine_pairs(mining_bank or bank, generator, config.train.mining, neighbours=neighbours, stats=stats,
                           weights=weights)
        parts.append(mined.tagged(PairBatch.MINED, config.weights.mined))
    return PairBatch.cat(parts), (stats[0] if stats else None)


def _latest_links(store: Store, min_score: float, model_id: str | None = None) -> list:
    """Unrejected, unconfirmed links at or above ``min_score`` of the latest discovery run
    (of ``model_id`` when given) that stored links; a run cut short still verified them."""
    for run in reversed(store.list_runs(model_id=model_id, kind="discovery")):
        if store.count_links(run_id=run.run_id):
            return store.list_links(run_id=run.run_id, status=[UNREVIEWED, UNSURE], min_score=min_score, inliers=True)
    return []


def _expert_batch(train_links, clusters, bank: FeatureBank, index: dict[str, int],
                  config: ExpertPairConfig) -> PairBatch | None:
    confirmed = [lk.match for lk in train_links if lk.status == CONFIRM and lk.image_a in index and lk.image_b in index]
    rejected = [lk.match for lk in train_links if lk.status == REJECT and lk.image_a in index and lk.image_b in index]
    for c in clusters:
        confirmed += [m for m in cluster_matches([r.region for r in c.regions]) if m.image_a in index and m.image_b in index]
    if not confirmed and not rejected:
        return None
    batch = expert_pairs(confirmed, rejected, bank, config, image_index=index)
    return batch if len(batch) else None


def _positives_report(store: Store, pairs: PairBatch, bank: FeatureBank, mining: MiningStats | None) -> dict:
    """Per source: pairs (and precision against attached ground truth); mining's counts."""
    report: dict = {}
    truth = ground_truth_copies(store)
    measured = precision_by_source(pairs, bank, truth) if truth else {}
    for code, name in enumerate(PairBatch.SOURCE_NAMES):
        n = int((pairs.source == code).sum())
        if n:
            report[name] = {"pairs": n, **({"precision": measured[name]["precision"]} if name in measured else {})}
    if mining is not None:
        report["mining"] = asdict(mining)
    return report


def _positives_line(positives: dict) -> str:
    parts = []
    for name in PairBatch.SOURCE_NAMES:
        if name in positives:
            p = positives[name].get("precision")
            parts.append(f"{name} {positives[name]['pairs']}" + (f" (precision {p:.2f})" if p is not None else ""))
    m = positives.get("mining")
    if m:
        parts.append(f"mining verified {m['n_verified']} of {m['n_candidates']} candidates (floor {m['min_votes']} votes)")
    return "; ".join(parts) or "none"


def _figures(metrics: dict) -> str:
    shown = [f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)]
    return ", ".join(shown) or "no held-out data (attach annotations or review links)"
