"""The review queue: which unreviewed candidate link an expert sees next.

Three orders, selectable in the CLI and the app (``STRATEGIES``):

* ``score``: highest discovery score first, the links most likely to be true.
* ``uncertainty``: scores nearest the decision threshold first, where a verdict tells
  the next training round the most (active learning's "least confident").
* ``coverage``: one link from every unreviewed cluster before a second one from any
  cluster, so an hour of review touches as many repeated details as possible. Within a
  pass, clusters take turns by their best link's score; links outside an unreviewed
  cluster come last, best first.

Ties are broken by ``link_id`` so the same project always gives the same queue (a
reviewer who reloads the page sees the same next item).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from db.records import UNREVIEWED, Link, StoredCluster
from db.store import Store

STRATEGIES = ("score", "uncertainty", "coverage")


def next_links(store: Store, strategy: str = "score", threshold: float = 0.0, limit: int = 20,
               model_id: str | None = None, exclude: Collection[int] = ()) -> list[Link]:
    """The first ``limit`` unreviewed links in the order of ``strategy``.

    Args:
        store: the project.
        strategy: one of `STRATEGIES`.
        threshold: the decision threshold on the discovery score (``uncertainty`` only).
        limit: how many links to return at most.
        model_id: only links found by this model (default: all).
        exclude: link ids to leave out (e.g. the ones the reviewer skipped).

    Raises:
        ValueError: unknown strategy or negative limit.
    """
    _check(strategy, limit)
    exclude = set(exclude)
    if strategy == "score":
        # The store already orders by score: fetch just enough rows for a large project.
        rows = store.list_links(model_id=model_id, status=UNREVIEWED, order="score",
                                limit=limit + len(exclude))
        return [lk for lk in rows if lk.link_id not in exclude][:limit]
    links = [lk for lk in store.list_links(model_id=model_id, status=UNREVIEWED, order="link_id")
             if lk.link_id not in exclude]
    clusters = (store.list_clusters(model_id=model_id, status=UNREVIEWED)
                if strategy == "coverage" else [])
    return order_links(links, strategy, threshold, link_clusters(clusters))[:limit]


def order_links(links: Sequence[Link], strategy: str, threshold: float = 0.0,
                cluster_of: Mapping[int, int] | None = None) -> list[Link]:
    """Order ``links`` by ``strategy`` (pure: the known-answer tests call this).

    Args:
        cluster_of: link id -> id of the unreviewed cluster it belongs to (``coverage``).
    """
    _check(strategy, 0)
    if strategy == "score":
        return sorted(links, key=lambda lk: (-lk.score, lk.link_id))
    if strategy == "uncertainty":
        return sorted(links, key=lambda lk: (abs(lk.score - threshold), -lk.score, lk.link_id))
    return _coverage(links, cluster_of or {})


def link_clusters(clusters: Sequence[StoredCluster]) -> dict[int, int]:
    """Link id -> cluster id, from the clusters' member regions (lowest cluster id wins)."""
    found: dict[int, int] = {}
    for cluster in sorted(clusters, key=lambda c: c.cluster_id):
        for link_id in cluster.link_ids:
            found.setdefault(link_id, cluster.cluster_id)
    return found


def _coverage(links: Sequence[Link], cluster_of: Mapping[int, int]) -> list[Link]:
    """Round-robin over clusters, each cluster's links best first; the rest at the end."""
    best_first = sorted(links, key=lambda lk: (-lk.score, lk.link_id))
    per_cluster: dict[int, list[Link]] = {}
    loose: list[Link] = []
    for link in best_first:
        cluster = cluster_of.get(link.link_id)
        (per_cluster.setdefault(cluster, []) if cluster is not None else loose).append(link)
    # dicts keep insertion order: clusters take turns in the order of their best link
    queues = list(per_cluster.values())
    ordered: list[Link] = []
    depth = 0
    while any(depth < len(q) for q in queues):
        ordered.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return ordered + loose


def _check(strategy: str, limit: int) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"review strategy must be one of {STRATEGIES}, not {strategy!r}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
