"""Executors: where discovery's two embarrassingly parallel stages run.

Feature extraction (per image) and pair verification (per pair) go to an executor;
everything else of a discovery run (shortlist, graph, clusters, maps) stays in the
driver process, the one process that writes the project file.

- ``local`` (default): this process, as discovery always ran; verification commits to
  the store every ``DiscoverConfig.commit_every`` pairs.
- ``ray``: a Ray cluster (``pip install 'artminer-hitl[ray]'``): Ray Data ``map_batches``
  over an actor pool, each actor loading the model once; workers write the feature cache
  and Parquet shards under the project's data folder (which every node must see at the
  same path), the driver loads the shards in one transaction (see README, "Beyond one
  machine: Ray").
"""

from __future__ import annotations

from typing import Protocol

from db.store import Store
from engine.backbone import Backbone
from hitl.discover import DiscoverConfig
from hitl.project import ProjectPaths

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Runs the parallel stages of a discovery run (``hitl.discover.run_discovery``)."""

    def cache_features(self, backbone: Backbone, items: list[tuple[str, str]], hashes: dict[str, str],
                       config: DiscoverConfig, paths: ProjectPaths) -> list[str]:
        """Make sure every image's pyramid (and its mirror image's, for ``mirror="image"``)
        is in the project's feature cache; returns the paths that could not be read."""
        ...

    def verify_and_store(self, store: Store, paths: ProjectPaths, run_id: int, todo: list[tuple[str, str]],
                         pyramids, config: DiscoverConfig, backbone: Backbone, progress: bool,
                         weights, mirrored) -> int:
        """Verify the pairs both ways and store their links under ``run_id``; returns pairs verified."""
        ...


class LocalExecutor:
    """This process: the steps of ``hitl.discover`` as they are (nothing to hand out)."""

    def cache_features(self, backbone, items, hashes, config, paths) -> list[str]:
        from hitl.executors.work import cache_features

        return cache_features(backbone, items, hashes, config.features, paths.features, config.mirror == "image")

    def verify_and_store(self, store, paths, run_id, todo, pyramids, config, backbone, progress,
                         weights, mirrored) -> int:
        from hitl.discover import _verify_and_store

        return _verify_and_store(store, run_id, todo, pyramids, config, backbone, progress, weights, mirrored)


def make_executor(name: str = "local", address: str | None = None, workers: int | None = None,
                  device: str = "cpu") -> Executor:
    """An executor by name (``EXECUTORS``).

    Args:
        address: ``ray``: the cluster to join ("auto": the one started on this node with
            ``ray start``); None: a local Ray instance with ``workers`` CPUs.
        workers: ``ray``: actors per stage (default: the cluster's CPUs).
        device: ``ray``: the workers' device ("cuda": one GPU per actor).

    Raises:
        ValueError: unknown name. ImportError: ``ray`` asked for but not installed.
    """
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from hitl.executors.ray_executor import RayConfig, RayExecutor

        return RayExecutor(RayConfig(address=address, workers=workers, device=device))
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, not {name!r}")


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "make_executor"]
