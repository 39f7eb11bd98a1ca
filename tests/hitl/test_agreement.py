"""Links weighed by their aligned agreement: a copy keeps its score, a look-alike loses it."""

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from db.records import ModelRef
from db.store import Store
from engine.types import Box, PairMatch
from hitl.agreement import (
    AgreementConfig,
    ImageViews,
    agreement_weight,
    image_sources,
    weigh_by_agreement,
    weigh_unmeasured_links,
)
from tests.conftest import textured

W, H = 320, 240
MOTIF_A = Box(40, 40, 168, 136)  # the detail in A
SHIFT = (120.0, 60.0)  # where B holds its copy: A's box moved by this


def _images(tmp_path: Path) -> dict[str, tuple[str, int]]:
    """A, B (A's detail pasted, moved by SHIFT, over other ground) and C (unrelated)."""
    motif = textured(7, 96, 128)
    a = textured(1, H, W).copy()
    a[40:136, 40:168] = motif
    b = textured(2, H, W).copy()
    b[100:196, 160:288] = motif
    c = textured(3, H, W)
    out = {}
    for name, rgb in (("a", a), ("b", b), ("c", c)):
        path = tmp_path / f"{name}.png"
        Image.fromarray(rgb).save(path)
        out[name] = (str(path), W)
    return out


def _link(b: str = "b", score: float = 0.05) -> PairMatch:
    box_b = Box(MOTIF_A.x0 + SHIFT[0], MOTIF_A.y0 + SHIFT[1], MOTIF_A.x1 + SHIFT[0], MOTIF_A.y1 + SHIFT[1])
    return PairMatch("a", b, MOTIF_A, box_b, ((1.0, 0.0, SHIFT[0]), (0.0, 1.0, SHIFT[1])), score, 12)


def test_weight_is_the_correlation_over_full_clipped():
    assert agreement_weight(0.1, 0.2) == pytest.approx(0.5)
    assert agreement_weight(0.5, 0.2) == 1.0
    assert agreement_weight(-0.3, 0.2) == 0.0


def test_a_copy_keeps_its_score_and_a_look_alike_loses_it(tmp_path):
    views = ImageViews(_images(tmp_path), max_side=1024)
    config = AgreementConfig()
    copy, unrelated = weigh_by_agreement([_link("b"), _link("c")], views, config, min_score=0.02)
    # not 1: the 10 % margin around the box shows different grounds
    assert copy.agreement > 0.6 and copy.score == pytest.approx(0.05)
    assert abs(unrelated.agreement) < 0.15 and unrelated.score < 0.05 * 0.75
    # the weight is exactly what the score lost
    assert unrelated.score == pytest.approx(0.05 * agreement_weight(unrelated.agreement, config.full))


def test_links_below_the_threshold_and_unreadable_images_are_left_as_verified(tmp_path):
    images = _images(tmp_path)
    images["gone"] = (str(tmp_path / "missing.png"), W)
    views = ImageViews(images, max_side=1024)
    low, lost = weigh_by_agreement([_link("c", score=0.01), _link("gone")], views, AgreementConfig(), 0.02)
    assert low == _link("c", score=0.01) and low.agreement is None
    assert lost == _link("gone") and lost.agreement is None


def test_mode_off_changes_nothing(tmp_path):
    views = ImageViews(_images(tmp_path), max_side=1024)
    links = [_link("b"), _link("c")]
    assert weigh_by_agreement(links, views, AgreementConfig(mode="off"), 0.02) == links


def test_links_stored_unweighed_are_weighed_once_and_other_runs_keep_their_score(tmp_path):
    views = ImageViews(_images(tmp_path), max_side=1024)
    store = Store(":memory:")
    store.add_model(ModelRef("m", "effnet-lite0"))
    run = store.start_run("m", {})
    copy, look_alike, low, measured = store.add_links(run, [
        _link("b"), _link("c"), _link("c", score=0.01), replace(_link("c"), agreement=0.9)])
    imported, = store.add_links(store.start_run("m", {}, kind="import"), [_link("c")], mark_verified=False)
    assert weigh_unmeasured_links(store, "m", views, AgreementConfig(), 0.02) == 2
    got = {lk.link_id: lk.match for lk in store.list_links()}
    assert got[copy].agreement > 0.6 and got[copy].score == pytest.approx(0.05)
    assert got[look_alike].agreement < 0.15 and got[look_alike].score < 0.05 * 0.75
    assert got[low] == _link("c", score=0.01)  # below the threshold: not measured
    assert got[measured] == replace(_link("c"), agreement=0.9)  # measured already: kept
    assert got[imported] == _link("c")  # an imported link is not discovery's to weigh
    assert weigh_unmeasured_links(store, "m", views, AgreementConfig(), 0.02) == 0  # once only


def test_views_are_downscaled_with_their_scale_and_few_are_kept(tmp_path):
    views = ImageViews(_images(tmp_path), max_side=160, keep=2)
    rgb, scale = views("a")
    assert max(rgb.shape[:2]) == 160 and scale == pytest.approx(0.5)
    views("b"), views("c")
    assert len(views._views) == 2 and "a" not in views._views
    # a copy still agrees on half-size views (boxes are in original pixels)
    copy, = weigh_by_agreement([_link("b")], views, AgreementConfig(), 0.02)
    assert copy.agreement > 0.5


def test_image_sources_and_bad_config():
    class Record:
        image_id, path, width = "x", Path("/p/x.jpg"), 640
    assert image_sources([Record()]) == {"x": ("/p/x.jpg", 640)}
    with pytest.raises(ValueError, match="mode"):
        AgreementConfig(mode="pixels")
    with pytest.raises(ValueError, match="full"):
        replace(AgreementConfig(), full=0.0)
