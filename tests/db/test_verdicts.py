"""The verdict log: append-only, undo by revocation, status as a view, full history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from db import Store
from engine.types import Box, ModelRef, PairMatch


@pytest.fixture
def store_links() -> tuple[Store, list[int]]:
    store = Store(":memory:")
    store.add_model(ModelRef("m", "effnet-lite0"))
    run = store.start_run("m", {})
    affine = ((1.0, 0.0, 5.0), (0.0, 1.0, 0.0))
    matches = [PairMatch("a", f"b{i}", Box(0, 0, 8, 8), Box(5, 0, 13, 8), affine, 0.9 - i / 10, 6)
               for i in range(3)]
    return store, store.add_links(run, matches)


def test_status_is_latest_live_verdict(store_links) -> None:
    store, (l1, l2, _) = store_links
    assert store.link_status(l1) == "unreviewed"
    v1 = store.add_verdict(l1, "confirm", "ana", note="same dog")
    v2 = store.add_verdict(l1, "reject", "ben")
    assert store.link_status(l1) == "reject"
    store.undo_verdict(v2, "ben")
    assert store.link_status(l1) == "confirm"
    store.undo_verdict(v1, "ana")
    assert store.link_status(l1) == "unreviewed"
    u = store.add_verdict(l2, "unsure", "ana")
    assert {k: v.verdict_id for k, v in store.current_verdicts().items()} == {l2: u}
    assert store.status_counts() == {"confirm": 0, "reject": 0, "unsure": 1, "unreviewed": 2,
                                     "disputed": 0}
    assert [lk.link_id for lk in store.list_links(status=["unsure", "confirm"])] == [l2]


def test_history_keeps_every_row_with_who_and_when(store_links) -> None:
    store, (l1, *_) = store_links
    before = datetime.now(UTC)
    v1 = store.add_verdict(l1, "confirm", "ana", note="same dog")
    undo = store.undo_verdict(v1, "ana", note="misclick")
    v3 = store.add_verdict(l1, "reject", "ana")
    history = store.link_history(l1)
    assert [(h.verdict_id, h.verdict, h.revokes, h.revoked_by) for h in history] == [
        (v1, "confirm", None, undo), (undo, "revoke", v1, None), (v3, "reject", None, None)]
    assert history[0].note == "same dog" and history[1].note == "misclick"
    assert all(h.annotator == "ana" and h.created >= before - timedelta(seconds=1)
               and h.created.tzinfo is not None for h in history)
    # the geometry shown defaults to the link's
    assert history[0].geometry == {"box_a": [0.0, 0.0, 8.0, 8.0], "box_b": [5.0, 0.0, 13.0, 8.0],
                                   "affine": [[1.0, 0.0, 5.0], [0.0, 1.0, 0.0]]}


def test_undo_rules(store_links) -> None:
    store, (l1, *_) = store_links
    v1 = store.add_verdict(l1, "confirm", "ana")
    undo = store.undo_verdict(v1, "ana")
    with pytest.raises(ValueError, match="already undone"):
        store.undo_verdict(v1, "ben")
    with pytest.raises(ValueError, match="is an undo"):
        store.undo_verdict(undo, "ana")
    with pytest.raises(ValueError, match="verdict 999"):
        store.undo_verdict(999, "ana")


def test_undo_my_last_walks_back_one_annotator(store_links) -> None:
    store, (l1, l2, l3) = store_links
    a1 = store.add_verdict(l1, "confirm", "ana")
    store.add_verdict(l2, "reject", "ben")
    a2 = store.add_verdict(l3, "unsure", "ana")
    assert store.last_verdict_by("ana").verdict_id == a2
    store.undo_verdict(a2, "ana")
    assert store.last_verdict_by("ana").verdict_id == a1
    store.undo_verdict(a1, "ana")
    assert store.last_verdict_by("ana") is None
    assert store.last_verdict_by("ben").target_id == l2


def test_log_is_append_only(store_links) -> None:
    store, (l1, *_) = store_links
    v1 = store.add_verdict(l1, "confirm", "ana")
    store.undo_verdict(v1, "ana")
    assert len(store.list_verdicts()) == 2  # the undone verdict is still there
    names = [n for n in dir(store) if "verdict" in n]
    assert not [n for n in names if any(w in n for w in ("update", "delete", "remove", "edit"))]


def test_bad_verdicts_are_refused(store_links) -> None:
    store, (l1, *_) = store_links
    with pytest.raises(ValueError, match="verdict must be one of"):
        store.add_verdict(l1, "maybe", "ana")
    with pytest.raises(ValueError, match="verdict must be one of"):
        store.add_verdict(l1, "revoke", "ana")
    with pytest.raises(ValueError, match="link 404"):
        store.add_verdict(404, "confirm", "ana")
    with pytest.raises(ValueError, match="annotator"):
        store.add_verdict(l1, "confirm", "  ")
    with pytest.raises(ValueError, match="cluster 7"):
        store.add_verdict(7, "confirm", "ana", target_kind="cluster")
    assert store.list_verdicts() == []


def test_geometry_as_shown_and_import_time(store_links) -> None:
    store, (l1, *_) = store_links
    shown = {"box_a": [1, 1, 9, 9], "box_b": [6, 1, 14, 9], "affine": [[1, 0, 5], [0, 1, 0]]}
    when = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    vid = store.add_verdict(l1, "confirm", "ana", geometry=shown, created=when)
    got = store.get_verdict(vid)
    assert got.geometry == shown and got.created == when


def test_verdicts_since_time_watermark_and_round(store_links) -> None:
    store, (l1, l2, _) = store_links
    old = store.add_verdict(l1, "confirm", "ana", created=datetime(2020, 1, 1, tzinfo=UTC))
    rid = store.add_round("m", {})
    new = store.add_verdict(l2, "reject", "ben")
    assert [v.verdict_id for v in store.list_verdicts(round_id=rid)] == [new]
    assert [v.verdict_id for v in store.list_verdicts(after_id=old)] == [new]
    since = datetime(2021, 1, 1, tzinfo=UTC)
    assert [v.verdict_id for v in store.list_verdicts(since=since)] == [new]
    assert [v.verdict_id for v in store.list_verdicts(annotator="ana")] == [old]
