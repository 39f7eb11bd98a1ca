"""Confirmed one-shot hits become ordinary confirmed links."""

from __future__ import annotations

import pytest

from db.records import ImageRecord
from db.store import Store
from engine.types import Box, Detection, ModelRef
from hitl.views.query_links import (
    QUERY_RUN_KIND,
    box_affine,
    confirm_hit,
    detection_match,
    hits_above,
    judge_hit,
    other_images,
    start_query_run,
)


def test_box_affine_maps_box_onto_box():
    src, dst = Box(10, 20, 30, 60), Box(100, 0, 140, 20)
    (a, b, c), (d, e, f) = box_affine(src, dst)
    for x, y, x2, y2 in ((10, 20, 100, 0), (30, 60, 140, 20)):
        assert (a * x + b * y + c, d * x + e * y + f) == pytest.approx((x2, y2))


def test_confirm_hit_writes_link_and_verdict():
    store = Store(":memory:")
    store.add_images([ImageRecord(i, i * 4, f"/x/{i}.jpg", 100, 100) for i in "qh"])
    store.add_model(ModelRef("m", "m"))
    box = Box(10, 10, 40, 40)
    run = start_query_run(store, "m", "q", box)
    done = confirm_hit(store, run, "q", box, Detection("h", Box(50, 50, 70, 70), 0.8), "mk", note="yes")
    link = store.get_link(done.link_id)
    assert (link.image_a, link.image_b, link.box_b, link.status) == ("q", "h", Box(50, 50, 70, 70), "confirm")
    assert link.score == pytest.approx(0.8)
    assert store.get_run(run).kind == QUERY_RUN_KIND and store.get_run(run).params["query_image"] == "q"
    assert store.link_history(done.link_id)[0].note == "yes"


def test_a_query_is_not_linked_to_itself():
    box = Box(0, 0, 5, 5)
    with pytest.raises(ValueError, match="itself"):
        detection_match("q", box, Detection("q", box, 1.0))


def test_rejected_hit_is_a_hard_negative_link():
    store = Store(":memory:")
    store.add_images([ImageRecord(i, i * 4, f"/x/{i}.jpg", 100, 100) for i in "qh"])
    store.add_model(ModelRef("m", "m"))
    box = Box(10, 10, 40, 40)
    run = start_query_run(store, "m", "q", box)
    done = judge_hit(store, run, "q", box, Detection("h", Box(50, 50, 70, 70), 0.4), "reject", "mk")
    assert store.get_link(done.link_id).status == "reject"
    assert [lk.link_id for lk in store.list_links(status="reject")] == [done.link_id]
    with pytest.raises(ValueError, match="verdict"):
        judge_hit(store, run, "q", box, Detection("h", Box(1, 1, 9, 9), 0.4), "maybe", "mk")


def test_query_image_left_out_and_hits_above_a_score():
    hits = [Detection("q", Box(0, 0, 5, 5), 1.0), Detection("a", Box(0, 0, 5, 5), 0.8),
            Detection("b", Box(0, 0, 5, 5), 0.5), Detection("c", Box(0, 0, 5, 5), 0.3)]
    kept = other_images(hits, "q")
    assert [h.image_id for h in kept] == ["a", "b", "c"]
    assert hits_above(kept, 0.5) == [0, 1]
    assert hits_above(kept, 0.5, done={0}) == [1]
    assert hits_above(kept, 0.9) == []
