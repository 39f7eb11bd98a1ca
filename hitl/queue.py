"""The review queue: which unreviewed candidate link an expert sees next.

Four orders, selectable in the CLI and the app (``STRATEGIES``):

* ``score``: highest discovery score first, the links most likely to be true.
* ``uncertainty``: scores nearest the decision threshold first, where a verdict tells
  the next training round the most (active learning's "least confident").
* ``coverage``: one link from every unreviewed cluster before a second one from any
  cluster, so an hour of review touches as many repeated details as possible. Within a
  pass, clusters take turns by their best link's score; links outside an unreviewed
  cluster come last, best first.
* ``cross-source``: links between images of two different sources (``collection``
  metadata) first, best first, then links within one source. In a collection of several
  manuscripts, albums or archives, a page's neighbours within its own source share its
  layout and script; the copies an expert is looking for cross sources.

Ties are broken by ``link_id`` so the same project always gives the same queue (a
reviewer who reloads the page sees the same next item).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from db.records import UNREVIEWED, Link, StoredCluster
from db.store import Store

STRATEGIES = ("score", "uncertainty", "coverage", "cross-source")


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
    source_of = ({img.image_id: img.collection for img in store.list_images()}
                 if strategy == "cross-source" else None)
    return order_links(links, strategy, threshold, link_clusters(clusters), source_of)[:limit]


def order_links(links: Sequence[Link], strategy: str, threshold: float = 0.0,
                cluster_of: Mapping[int, int] | None = None,
                source_of: Mapping[str, str | None] | None = None) -> list[Link]:
    """Order ``links`` by ``strategy`` (pure: the known-answer tests call this).

    Args:
        cluster_of: link id -> id of the unreviewed cluster it belongs to (``coverage``).
        source_of: image id -> its source (``collection``) (``cross-source``).
    """
    _check(strategy, 0)
    if strategy == "score":
        return sorted(links, key=lambda lk: (-lk.score, lk.link_id))
    if strategy == "cross-source":
        return sorted(links, key=lambda lk: (not crosses_sources(lk, source_of or {}), -lk.score, lk.link_id))
    if strategy == "uncertainty":
        return sorted(links, key=lambda lk: (abs(lk.score - threshold), -lk.score, lk.link_id))
    return _coverage(links, cluster_of or {})


def crosses_sources(link: Link, source_of: Mapping[str, str | None]) -> bool:
    """Both images have a known source, and they differ."""
    a, b = source_of.get(link.image_a), source_of.get(link.image_b)
    return bool(a) and bool(b) and a != b


def source_summary(links: Sequence[Link], source_of: Mapping[str, str | None]) -> list[dict]:
    """Links within each source and across each pair of sources, with their review status.

    Returns:
        one row per (source, source) pair, most links first: ``{"sources": (a, b),
        "links": n, <status>: n ...}``; ``a == b`` for links within a source, and an
        unknown source is ``"(none)"``.
    """
    rows: dict[tuple[str, str], dict] = {}
    for link in links:
        key = tuple(sorted((source_of.get(link.image_a) or "(none)", source_of.get(link.image_b) or "(none)")))
        row = rows.setdefault(key, {"sources": key, "links": 0})
        row["links"] += 1
        row[link.status] = row.get(link.status, 0) + 1
    return sorted(rows.values(), key=lambda r: (-r["links"], r["sources"]))


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
