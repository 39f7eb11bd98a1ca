"""The Ray executor: discovery's features and pair verification on a Ray cluster.

Each stage is one Ray Data pipeline, ``from_items`` -> ``map_batches`` over an actor
pool (``concurrency`` actors, one CPU each, or one GPU each with ``device="cuda"``):

- features: rows are images (id, path, content hash) not yet in the feature cache; a
  :class:`FeatureWorker` actor builds the model once, then caches batches of pyramids
  (and those of the mirror images) in the project's feature folder;
- verification: rows are shards (``hitl.executors.shards``) not yet on disk; a
  :class:`VerifyWorker` actor reads the pyramids of a shard's images from the feature
  cache, verifies its pairs both ways and writes the shard's Parquet file.

Ray Data rather than hand-made actors: its actor pool keeps every actor fed, backs off
when the object store fills, and reports a worker's error to the driver, for a few
lines here. Workers never open the project file; the driver loads the shards into it in
one transaction once every shard is written. A run that died (a worker raised, a node
or the driver was lost) is rerun with the same command: it plans the same shards, skips
the finished ones, and nothing is doubled.

Every node must see the project's data folder (``artminer-data/``: feature cache,
checkpoints, shards) and the images at the paths the project stores: a shared
filesystem (NFS, a cloud bucket mounted with a FUSE driver), mounted at the same path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from db.store import Store
from engine.backbone import Backbone, create_backbone
from engine.features import FeatureCache, FeatureConfig, autocast_dtype
from engine.images import max_pixels, set_max_pixels
from hitl.agreement import image_sources
from hitl.discover import DiscoverConfig
from hitl.executors.shards import Shard, load_shards, plan_shards, shard_folder
from hitl.executors.work import (
    ShardVerifier,
    VerifySetup,
    cache_features,
    features_todo,
    verify_setup,
)
from hitl.project import ProjectPaths


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start Ray inside this process; "auto": join the cluster `ray start` made here
    workers: int | None = None  # actors per stage; None: the cluster's CPUs (its GPUs with device "cuda")
    device: str = "cpu"  # the actors' device; "cuda" gives each actor one GPU
    # Pairs per shard: the resume granularity, as the local executor's commit chunks;
    # None takes DiscoverConfig.commit_every (256), so both executors group pairs alike.
    shard_pairs: int | None = None
    feature_batch: int = 16  # images per feature call (collection_features' batch)
    # Fault injection for tests: each verification actor raises after writing this many
    # shards, as a node lost midway would end the job.
    fail_after_shards: int | None = None


@dataclass
class ShardStats:
    """What the last verification stage did: shards planned, found on disk, written now."""

    planned: int = 0
    skipped: int = 0
    written: int = 0


# CPUs each actor reserves, and the torch threads it runs. Ray sets OMP_NUM_THREADS to an
# actor's CPUs only where the driver's environment leaves it unset: a driver started with
# OMP_NUM_THREADS=2 gave each one-CPU actor two threads, and two such actors on two cores
# verified pairs 4x slower than one local process (300 images: 256 against 63 ms/pair).
ACTOR_CPUS = 1


def _one_actor_threads() -> None:
    import torch

    torch.set_num_threads(ACTOR_CPUS)


def _precision(backbone: Backbone, device: str) -> str:
    """The driver's feature precision on ``device`` (``ARTMINER_PRECISION``): "bf16" or "fp32"
    on CPUs (engine.features.cpu_precision: a node without native bf16 still computes what
    the driver does, so one cache never mixes precisions)."""
    import torch

    if device != "cpu" or next(backbone.parameters()).device.type != "cpu":
        return "auto"  # CUDA runs float16 autocast; a driver on CUDA has no CPU choice to pass on
    return "bf16" if autocast_dtype(backbone, torch.device("cpu")) == torch.bfloat16 else "fp32"


class FeatureWorker:
    """A Ray Data actor: builds the model once, then caches pyramids batch by batch."""

    def __init__(self, model: str, model_id: str, config: FeatureConfig, cache_root: str, mirror: bool,
                 device: str, pixel_limit: int, precision: str):
        import torch

        _one_actor_threads()
        set_max_pixels(pixel_limit)  # the project's decompression-bomb guard, as in the driver
        # The driver's bf16/fp32 choice, not this node's own: every image of the
        # cache is computed at one precision, whichever process computed it.
        os.environ["ARTMINER_PRECISION"] = precision
        self.backbone = create_backbone(model).to(torch.device(device))
        if self.backbone.model_id != model_id:
            raise RuntimeError(f"worker built {self.backbone.model_id}, the run uses {model_id}: "
                               "is the checkpoint on a shared path?")
        self.config, self.cache_root, self.mirror = config, cache_root, mirror

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [(str(i), str(p)) for i, p in zip(batch["image_id"], batch["path"])]
        hashes = {str(i): str(h) for i, h in zip(batch["image_id"], batch["hash"])}
        failed = cache_features(self.backbone, items, hashes, self.config, self.cache_root, self.mirror)
        return {"failed": np.array(failed, dtype=object)}


class VerifyWorker:
    """A Ray Data actor: verifies shards, one per call, and writes their Parquet files."""

    def __init__(self, setup: VerifySetup, folder: str, fail_after: int | None = None):
        _one_actor_threads()
        self.verify, self.folder, self.fail_after = ShardVerifier(setup), Path(folder), fail_after
        self.written = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names, links = [], []
        for index, name, pairs in zip(batch["index"], batch["name"], batch["pairs"]):
            if self.fail_after is not None and self.written >= self.fail_after:
                raise RuntimeError(f"fault injection: worker stops after {self.fail_after} shards")
            shard = Shard(int(index), tuple(tuple(p) for p in json.loads(str(pairs))), str(name))
            links.append(self.verify(shard, self.folder))
            names.append(shard.name)
            self.written += 1
        return {"shard": np.array(names, dtype=object), "links": np.array(links, dtype=np.int64)}


class RayExecutor:
    """Discovery's parallel stages on Ray (see the module docstring)."""

    def __init__(self, config: RayConfig = RayConfig()):
        if config.device not in ("cpu", "cuda"):
            raise ValueError(f"Ray workers run on cpu or cuda, not {config.device!r}")
        self.config = config
        self.stats = ShardStats()
        self._started = False

    # ------------------------------------------------------------ the cluster

    def start(self):
        """Start (or join) Ray now; returns the ``ray`` module.

        Call it before opening the project file: a Ray head started while DuckDB holds a
        file open in this process fails to start (its GCS server dies; Ray 2.60). Later
        calls, and the stages, reuse the running instance.
        """
        return self._ray()

    def _ray(self):
        import ray

        if not ray.is_initialized():
            # A local instance gets `workers` CPUs; a cluster brings its own resources.
            cpus = self.config.workers if self.config.address is None else None
            ray.init(address=self.config.address, num_cpus=cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            self._started = True
        return ray

    def _actors(self, ray) -> int:
        if self.config.workers:
            return self.config.workers
        resource = "GPU" if self.config.device == "cuda" else "CPU"
        return max(1, int(ray.cluster_resources().get(resource, 1)))

    def _map(self, ray, rows: list[dict], worker: type, batch_size: int, kwargs: dict, progress: bool):
        """Rows through an actor pool of ``worker``; yields the output rows as they come."""
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours is below
        gpus = 1 if self.config.device == "cuda" else 0
        ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
        pool = ray.data.ActorPoolStrategy(size=self._actors(ray))
        ds = ds.map_batches(worker, batch_size=batch_size, batch_format="numpy", compute=pool,
                            num_cpus=ACTOR_CPUS, num_gpus=gpus, fn_constructor_kwargs=kwargs)
        yield from ds.iter_rows()

    def close(self) -> None:
        """Shut down the Ray instance this executor started (a joined cluster stays up)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    # ------------------------------------------------------------ the stages

    def cache_features(self, backbone: Backbone, items: list[tuple[str, str]], hashes: dict[str, str],
                       config: DiscoverConfig, paths: ProjectPaths, progress: bool = False) -> list[str]:
        mirror = config.mirror == "image"
        todo = features_todo(items, hashes, FeatureCache(paths.features, backbone.model_id, config.features), mirror)
        if not todo:
            return []
        ray = self._ray()
        kwargs = {"model": backbone.ref.checkpoint or backbone.model_id, "model_id": backbone.model_id,
                  "config": config.features, "cache_root": str(paths.features), "mirror": mirror,
                  "device": self.config.device, "pixel_limit": max_pixels(),
                  "precision": _precision(backbone, self.config.device)}
        rows = [{"image_id": i, "path": str(p), "hash": hashes[i]} for i, p in todo]
        # Small collections still reach every actor: no batch larger than an actor's share.
        batch = max(1, min(self.config.feature_batch, -(-len(rows) // self._actors(ray))))
        return [str(row["failed"]) for row in self._map(ray, rows, FeatureWorker, batch, kwargs, progress)]

    def verify_and_store(self, store: Store, paths: ProjectPaths, run_id: int, todo: list[tuple[str, str]],
                         pyramids, config: DiscoverConfig, backbone: Backbone, progress: bool,
                         weights, mirrored) -> int:
        """Verify ``todo`` on the cluster, shard by shard, then store every shard in one transaction.

        ``mirrored`` is rebuilt by each worker from ``config.mirror``; ``weights`` must be
        discovery's :class:`engine.texture.TextureWeights`: its collection counts and the
        image hashes go to each actor once (Ray Data puts them in the object store), a
        shard row is only its pair list.
        """
        if not todo:
            return 0
        folder = shard_folder(paths.data_dir, run_id)
        shards = plan_shards(run_id, todo, self.config.shard_pairs or config.commit_every)
        left = [s for s in shards if not s.path(folder).is_file()]
        self.stats = ShardStats(planned=len(shards), skipped=len(shards) - len(left))
        if left:
            ray = self._ray()
            setup = verify_setup(pyramids, config, weights, self.config.device, image_sources(store.list_images()))
            rows = [{"index": s.index, "name": s.name, "pairs": json.dumps(s.pairs)} for s in left]
            kwargs = {"setup": setup, "folder": str(folder), "fail_after": self.config.fail_after_shards}
            bar = tqdm(total=len(shards), initial=self.stats.skipped, desc="verify shards (ray)", unit="shard",
                       disable=not progress)
            for _ in self._map(ray, rows, VerifyWorker, 1, kwargs, progress):
                self.stats.written += 1
                bar.update(1)
            bar.close()
        load_shards(store, run_id, shards, folder)
        return len(todo)


__all__ = ["FeatureWorker", "RayConfig", "RayExecutor", "ShardStats", "VerifyWorker"]
