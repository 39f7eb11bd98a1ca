"""Expert judgements on whole clusters: confirm, reject, judge members, split.

A cluster's verdict is a row of the verdict log with ``target_kind='cluster'``, and it
is also a verdict on every member link still unreviewed: each gets a link verdict whose
``origin_verdict`` is the cluster verdict (`Store.add_cluster_verdict`), so the links
leave the review queue and count like verdicts given on the review page. Undoing the
cluster verdict revokes them too. A verdict on one *member* is a verdict on the link
that member region came from.

A **split** makes the parts real clusters: they are stored with `Store.add_clusters`
under a run of kind ``split`` (params ``{"split_of": id, "groups": [[region ids]]}``),
each part keeping its regions' links, and the original gets a ``reject`` verdict whose
geometry is ``{"split_into": [new cluster ids], "groups": [[region ids], ...]}``: the
grouping was wrong, not its members (so this reject reaches no link). The parts can
then be confirmed one by one. Undoing that reject undoes the split: its parts leave
`current_clusters` and the original is back.
"""

from __future__ import annotations

from collections.abc import Sequence

from db.records import StoredCluster, Verdict
from db.store import Store
from engine.graph import GraphConfig, build_clusters
from engine.types import Box, Cluster
from hitl.roles import User, acting_name

SPLIT_RUN_KIND = "split"
STRICT_CAP = GraphConfig().max_component_images  # images one detail may touch in strict mode


def current_clusters(store: Store, model_id: str) -> list[StoredCluster]:
    """Clusters of ``model_id``'s latest discovery run and of the splits made since, largest first."""
    runs = store.list_runs(model_id=model_id, kind="discovery")
    if not runs:
        return []
    latest = runs[-1].run_id
    split_runs = [r.run_id for r in store.list_runs(model_id=model_id, kind=SPLIT_RUN_KIND)
                  if r.run_id > latest]
    found: list[StoredCluster] = list(store.list_clusters(run_id=latest))
    for run_id in split_runs:
        parts = store.list_clusters(run_id=run_id)
        original = store.get_run(run_id).params.get("split_of")
        if set(split_of(store, original) or ()) == {c.cluster_id for c in parts}:
            found.extend(parts)  # a split that was undone leaves its parts out
    return sorted(found, key=lambda c: (-len(c.regions), c.cluster_id))


def boxes_per_image(cluster: StoredCluster) -> dict[str, tuple[Box, ...]]:
    """One entry per image of the cluster (in member order) with all its boxes: one tile each."""
    found: dict[str, list[Box]] = {}
    for member in cluster.regions:
        boxes = found.setdefault(member.region.image_id, [])
        if member.region.box not in boxes:
            boxes.append(member.region.box)
    return {image_id: tuple(boxes) for image_id, boxes in found.items()}


def filter_clusters(clusters: Sequence[StoredCluster], statuses: Sequence[str] | None = None,
                    min_size: int = 1, max_size: int | None = None) -> list[StoredCluster]:
    """Clusters whose status is in ``statuses`` (None: any) and whose image count is in range."""
    return [c for c in clusters
            if (statuses is None or c.status in statuses)
            and len(c.images) >= min_size and (max_size is None or len(c.images) <= max_size)]


def judge_cluster(store: Store, cluster_id: int, verdict: str, annotator: str | None,
                  note: str | None = None, *, actor: User | None = None) -> tuple[int, list[int]]:
    """A verdict on the cluster and its unreviewed member links; returns (cluster verdict, link verdicts).

    Raises:
        Forbidden: ``actor`` may not give verdicts, or names someone else (`hitl.roles`).
    """
    annotator = acting_name(actor, annotator, "verdict")
    return store.add_cluster_verdict(cluster_id, verdict, annotator, note=note)


def undo_last_cluster_action(store: Store, annotator: str | None, *, actor: User | None = None) -> Verdict | None:
    """Undo the annotator's latest cluster verdict or split still in force; returns it (None: nothing).

    Raises:
        Forbidden: ``actor`` may not give verdicts, or names someone else (`hitl.roles`).
    """
    annotator = acting_name(actor, annotator, "verdict")
    last = store.last_verdict_by(annotator, target_kind="cluster")
    if last is not None:
        store.undo_verdict(last.verdict_id, annotator)
    return last


def judge_members(store: Store, cluster: StoredCluster, region_ids: Sequence[int], verdict: str,
                  annotator: str | None, note: str | None = None, *,
                  actor: User | None = None) -> list[int]:
    """Verdicts on the links of the chosen member regions (each link once); returns their ids.

    Raises:
        ValueError: a region that is not a member of ``cluster``.
        Forbidden: ``actor`` may not give verdicts, or names someone else.
    """
    annotator = acting_name(actor, annotator, "verdict")
    members = {r.region_id: r for r in cluster.regions}
    unknown = sorted(set(region_ids) - set(members))
    if unknown:
        raise ValueError(f"regions {unknown} are not members of cluster {cluster.cluster_id}")
    link_ids = sorted({members[r].link_id for r in region_ids if members[r].link_id is not None})
    return [store.add_verdict(link_id, verdict, annotator, note=note) for link_id in link_ids]


def split_cluster(store: Store, cluster: StoredCluster, groups: Sequence[Sequence[int]],
                  annotator: str | None, note: str | None = None, *,
                  actor: User | None = None) -> list[int]:
    """Split ``cluster`` into parts; members left out of ``groups`` form one more part.

    Args:
        groups: region ids per part (disjoint).

    Returns:
        The new clusters' ids, in the order of ``groups`` (the rest last).

    Raises:
        ValueError: unknown or repeated regions, or fewer than two non-empty parts.
        Forbidden: ``actor`` is not an adjudicator (splitting rewrites others' work).
    """
    annotator = acting_name(actor, annotator, "split_cluster")
    parts = _split_parts(cluster, groups)
    members = {r.region_id: r for r in cluster.regions}
    run_id = store.start_run(cluster.model_id, {"split_of": cluster.cluster_id, "groups": parts},
                             kind=SPLIT_RUN_KIND)
    engine_clusters = [Cluster(i, tuple(members[r].region for r in part))
                       for i, part in enumerate(parts)]
    region_links = {members[r].region: members[r].link_id for part in parts for r in part
                    if members[r].link_id is not None}
    new_ids = store.add_clusters(run_id, engine_clusters, region_links)
    store.finish_run(run_id)
    text = f"split into clusters {', '.join(f'#{i}' for i in new_ids)}"
    store.add_verdict(cluster.cluster_id, "reject", annotator, target_kind="cluster",
                      note=f"{text}: {note}" if note else text,
                      geometry={"split_into": new_ids, "groups": parts})
    return new_ids


def strict_parts(store: Store, cluster: StoredCluster,
                 config: GraphConfig = GraphConfig(mode="strict")) -> list[list[int]]:
    """The member region ids grouped as the ``strict`` graph mode groups the cluster's links.

    A cluster grown through weak links (more than ``max_component_images`` images) is
    what strict mode exists for; splitting by these parts (`split_cluster`) re-clusters it
    in strict mode without re-running discovery. Members whose links strict mode drops
    are left out (the split puts them in a part of their own).
    """
    links = store.list_links(link_ids=list(cluster.link_ids)) if cluster.link_ids else []
    result = build_clusters([lk.match for lk in links], config)
    member_of = {(r.region.image_id, tuple(r.region.box.as_list())): r.region_id for r in cluster.regions}
    parts = []
    for found in result.clusters:
        ids = sorted({member_of[key] for reg in found.regions
                      if (key := (reg.image_id, tuple(reg.box.as_list()))) in member_of})
        if ids:
            parts.append(ids)
    return parts


def too_large(cluster: StoredCluster, config: GraphConfig = GraphConfig()) -> bool:
    """True when the cluster touches more images than strict mode would let one detail have."""
    return len(cluster.images) > config.max_component_images


def split_of(store: Store, cluster_id: int) -> list[int] | None:
    """The clusters a split cluster became (from its live verdict), or None."""
    for verdict in reversed(store.history("cluster", cluster_id)):
        if verdict.verdict != "revoke" and verdict.revoked_by is None:
            geometry = verdict.geometry or {}
            return list(geometry["split_into"]) if "split_into" in geometry else None
    return None


def _split_parts(cluster: StoredCluster, groups: Sequence[Sequence[int]]) -> list[list[int]]:
    members = [r.region_id for r in cluster.regions]
    chosen = [int(r) for group in groups for r in group]
    unknown = sorted(set(chosen) - set(members))
    if unknown:
        raise ValueError(f"regions {unknown} are not members of cluster {cluster.cluster_id}")
    if len(chosen) != len(set(chosen)):
        raise ValueError("a region can go into one part of a split only")
    parts = [sorted(int(r) for r in group) for group in groups if group]
    rest = [r for r in members if r not in set(chosen)]
    if rest:
        parts.append(rest)
    if len(parts) < 2:
        raise ValueError(f"splitting cluster {cluster.cluster_id} needs at least two non-empty parts")
    return parts
