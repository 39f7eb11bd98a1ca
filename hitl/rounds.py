"""A training round: verdicts + self-mined pairs -> a new model, measured before and after.

One round (``artminer train``):

1. split reviewed links once and for all into train (80%) and held-out (20%) sides;
2. measure the parent model on the held-out evaluation;
3. fine-tune from the parent: self-supervised mined pairs (paper §3) mixed with expert
   pairs from the train side (confirmed links as positives, rejected as hard negatives);
4. record the new model with its lineage, make it active, re-run discovery with it;
5. measure the new model on the same held-out evaluation and record both.

Held-out evaluation: (a) one-shot mAP on the annotation files attached to the project,
(b) on held-out verdicts, the average precision of the discovery score at separating
confirmed from rejected links, and the recall of confirmed links at the default threshold.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from db.records import CONFIRM, REJECT
from db.store import Store
from engine.backbone import Backbone, load_checkpoint
from engine.detect import FeatureBank
from engine.features import FeatureConfig
from engine.images import content_hash, load_rgb
from engine.mining import PairBatch
from engine.train import IterationLog, TrainConfig, train
from engine.verify import discovery_score
from hitl.discover import DEFAULT_MIN_SCORE, DiscoverConfig, run_discovery
from hitl.evaluation import evaluate_oneshot, project_queries
from hitl.oneshot import load_project_collection
from hitl.positives import cluster_matches, expert_pairs
from hitl.progress import STOPPED_PREFIX
from hitl.project import ProjectPaths, load_model

SOURCES = ("mined", "expert")
PHASES = ("loading the parent model", "measuring the parent model", "loading the training images", "training",
          "re-discovering with the new model", "measuring the new model")
MIN_HELDOUT = 4  # held-out verdicts (of both kinds) needed to measure without annotations


class RoundStopped(KeyboardInterrupt):
    """The round was asked to stop (SIGTERM from the app's Stop button or ``kill``)."""


class RoundRefused(ValueError):
    """A round that cannot teach or cannot be measured; the message says what is missing."""


@dataclass(frozen=True)
class RoundConfig:
    iterations: int = 200  # paper: ~200 rounds of mining + one gradient step
    sources: tuple[str, ...] = SOURCES  # what the model learns from
    holdout_fraction: float = 0.2  # reviewed links kept out of training, fixed once drawn
    seed: int = 0
    rediscover: bool = True  # run discovery with the new model (the map and links follow it)
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


def holdout_side(link_id: int, fraction: float, seed: int) -> str:
    """A link's side, a pure function of its id: stable across rounds and processes."""
    digest = hashlib.sha256(f"{seed}:{link_id}".encode()).digest()
    return "holdout" if int.from_bytes(digest[:4], "big") / 2**32 < fraction else "train"


def reviewed_links(store: Store, config: RoundConfig) -> tuple[list, list]:
    """(train, held-out) links with a final confirm/reject verdict; records new sides."""
    reviewed = store.list_links(status=[CONFIRM, REJECT])
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
        res = evaluate_oneshot(backbone, collection, queries, rerank=False, progress=progress)["cosine"]
        out["oneshot_map"] = res.mean_ap
        out["oneshot_top1"] = res.top1
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


def run_round(store: Store, paths: ProjectPaths, config: RoundConfig = RoundConfig(), from_model: str | None = None,
              device: str = "auto", progress: Callable[[IterationLog, int], None] | None = None,
              show_progress: bool = True,
              on_phase: Callable[[int, int, str], None] | None = None) -> RoundReport:
    """One training round (module doc). Raises :class:`RoundRefused` before any work when
    there is nothing to learn from or too little held out to measure.

    ``on_phase(index, total, name)`` is called as each of the round's `PHASES` starts
    (the app's log shows it above the step's progress bar).
    """
    def phase(index: int) -> None:
        if on_phase is not None:
            on_phase(index + 1, len(PHASES), PHASES[index])

    start = time.perf_counter()
    unknown = set(config.sources) - set(SOURCES)
    if unknown or not config.sources:
        raise RoundRefused(f"--sources must name some of {', '.join(SOURCES)}, got {', '.join(config.sources) or 'none'}")
    train_links, heldout = reviewed_links(store, config)
    confirmed_clusters = [c for c in store.list_clusters(status=CONFIRM)]
    _check_round(store, config, train_links, heldout, confirmed_clusters)

    phase(0)
    parent = load_model(store, from_model, device)
    round_id = _resume_or_start(store, parent.model_id, config)
    try:
        features = config.train.features
        phase(1)
        before = measure(store, paths, parent, heldout, DEFAULT_MIN_SCORE, show_progress, features)
        store.update_round(round_id, metrics={"before": before})
        phase(2)
        images, sizes, bank, ids = _training_images(store, paths, parent, show_progress, features)
        expert = _expert_batch(config, train_links, confirmed_clusters, bank, ids) if "expert" in config.sources else None
        # Without mined pairs every batch is expert pairs (engine.train then mines nothing).
        train_config = config.train if "mined" in config.sources else replace(config.train, expert_ratio=1.0)
        phase(3)
        result = train(parent, images, train_config, expert, paths.checkpoints / f"round-{round_id}",
                       progress=progress, image_sizes=sizes)
        new = load_checkpoint(result.model.checkpoint).to(next(parent.parameters()).device)
        store.add_model(new.ref, checkpoint_sha256=content_hash(result.model.checkpoint), round=round_id,
                        config={"round": config.params()})
        store.set_active_model(new.model_id)
        if config.rediscover:
            phase(4)
            run_discovery(store, paths, DiscoverConfig(features=features), backbone=new, progress=show_progress)
        phase(5)
        after = measure(store, paths, new, heldout, DEFAULT_MIN_SCORE, show_progress, features)
        store.update_round(round_id, status="done", new_model=new.model_id, metrics={"after": after})
    except BaseException as err:
        reason = (f"{STOPPED_PREFIX}: {err}" if isinstance(err, RoundStopped)
                  else f"{type(err).__name__}: {err}")
        store.update_round(round_id, status="failed", error=reason)
        raise
    return RoundReport(round_id, parent.model_id, new.model_id, before, after, time.perf_counter() - start)


def _check_round(store: Store, config: RoundConfig, train_links, heldout, clusters) -> None:
    has_expert = any(lk.status in (CONFIRM, REJECT) for lk in train_links) or bool(clusters)
    if config.sources == ("expert",) and not has_expert:
        raise RoundRefused("nothing to learn from: no confirmed or rejected link on the training side yet "
                           "(review some links, or add --sources mined)")
    if store.count_images() < 2:
        raise RoundRefused("nothing to learn from: the project needs at least 2 images")
    labels = {lk.status for lk in heldout}
    if not project_queries(store) and (len(heldout) < MIN_HELDOUT or labels != {CONFIRM, REJECT}):
        raise RoundRefused(
            f"too little held out to measure: {len(heldout)} held-out verdicts ({MIN_HELDOUT} needed, both "
            "confirmed and rejected) and no annotation file attached; review more links or attach "
            "ground truth with `artminer ingest --annotations FILE`")


def _resume_or_start(store: Store, parent: str, config: RoundConfig) -> int:
    """A killed round with the same parent and parameters continues from its checkpoint."""
    params = json.loads(json.dumps(config.params()))  # as stored: tuples come back as lists
    for r in reversed(store.list_rounds()):
        if r.parent_model == parent and r.params == params and r.status in ("running", "failed"):
            store.update_round(r.round_id, status="running")
            return r.round_id
    return store.add_round(parent, config.params())


def _training_images(store: Store, paths: ProjectPaths, parent: Backbone, show_progress: bool,
                     features: FeatureConfig):
    """Images at the largest level's resolution, their sizes, and the parent's bank."""
    collection = load_project_collection(store, paths, parent, show_progress, features)
    ids = collection.bank.image_ids
    max_pixels = 16 * features.max_side
    images = [torch.from_numpy(load_rgb(collection.paths[i], max_side=max_pixels).copy()).permute(2, 0, 1) for i in ids]
    sizes = [tuple(int(v) for v in s) for s in collection.bank.sizes.tolist()]
    return images, sizes, collection.bank, ids


def _expert_batch(config: RoundConfig, train_links, clusters, bank: FeatureBank, ids: list[str]) -> PairBatch | None:
    index = {image_id: i for i, image_id in enumerate(ids)}
    confirmed = [lk.match for lk in train_links if lk.status == CONFIRM and lk.image_a in index and lk.image_b in index]
    rejected = [lk.match for lk in train_links if lk.status == REJECT and lk.image_a in index and lk.image_b in index]
    for c in clusters:
        confirmed += [m for m in cluster_matches([r.region for r in c.regions]) if m.image_a in index and m.image_b in index]
    if not confirmed and not rejected:
        return None
    batch = expert_pairs(confirmed, rejected, bank, image_index=index)
    return batch if len(batch) else None
