"""The map page's columns: points joined with metadata, clusters and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from db.records import ImageRecord, Link, MapPoint, RegionRecord, StoredCluster
from engine.types import IDENTITY_AFFINE, Box, PairMatch, Region
from hitl.views.map_view import (
    NO_LINKS,
    NONE_LABEL,
    OTHER_LABEL,
    categories,
    colour_values,
    hover_texts,
    image_clusters,
    image_statuses,
    map_table,
)

BOX = Box(0, 0, 10, 10)


def _link(link_id: int, a: str, b: str, status: str) -> Link:
    return Link(link_id, 1, "m", PairMatch(a, b, BOX, BOX, IDENTITY_AFFINE, 0.5, 3), status)


def _image(image_id: str, **fields) -> ImageRecord:
    return ImageRecord(image_id, image_id, f"/x/{image_id}.jpg", 10, 10, **fields)


def test_image_statuses_prefer_the_most_telling():
    links = [_link(1, "a", "b", "reject"), _link(2, "a", "c", "confirm"),
             _link(3, "b", "c", "unreviewed"), _link(4, "d", "e", "unsure")]
    assert image_statuses(links) == {"a": "confirm", "b": "unreviewed", "c": "confirm",
                                     "d": "unsure", "e": "unsure"}


def test_image_clusters_largest_first():
    def cluster(cid: int, images: str) -> StoredCluster:
        regions = tuple(RegionRecord(i, Region(im, BOX)) for i, im in enumerate(images))
        return StoredCluster(cid, 1, "m", cid, regions)

    assert image_clusters([cluster(7, "abc"), cluster(3, "cd")]) == {"a": 7, "b": 7, "c": 7, "d": 3}


def test_image_map_colours():
    points = [MapPoint("image", i, float(k), 0.0, g) for k, (i, g) in enumerate(zip("abc", (0, -1, 2)))]
    table = map_table(points)
    images = {"a": _image("a", artist="Bruegel", year=1560), "b": _image("b", medium="oil")}
    assert table.image_ids == ("a", "b", "c") and table.link_ids.tolist() == [-1, -1, -1]
    assert colour_values(table, "group", images).tolist() == ["0", NONE_LABEL, "2"]
    assert colour_values(table, "artist", images).tolist() == ["Bruegel", NONE_LABEL, NONE_LABEL]
    years = colour_values(table, "date", images)
    assert years[0] == 1560 and np.isnan(years[1:]).all()
    assert colour_values(table, "status", images, statuses={"a": "confirm"}).tolist() == [
        "confirm", NO_LINKS, NO_LINKS]
    assert colour_values(table, "cluster", images, clusters={"b": 4}).tolist() == [
        NONE_LABEL, "#4", NONE_LABEL]
    with pytest.raises(ValueError, match="colour by"):
        colour_values(table, "size", images)


def test_region_map_points_find_their_link_and_image():
    links = {5: _link(5, "a", "b", "reject")}
    table = map_table([MapPoint("region", "5:a", 0, 0), MapPoint("region", "5:b", 1, 1)], links)
    assert table.image_ids == ("a", "b") and table.link_ids.tolist() == [5, 5]
    assert colour_values(table, "status", {}, link_status={5: "reject"}).tolist() == ["reject"] * 2
    with pytest.raises(ValueError, match="link_id"):
        map_table([MapPoint("region", "5:c", 0, 0)])
    with pytest.raises(ValueError, match="one kind"):
        map_table([MapPoint("region", "5:a", 0, 0), MapPoint("image", "a", 0, 0)])


def test_categories_pool_the_tail():
    values = np.array(["x"] * 3 + ["y"] * 2 + ["z", "w", NONE_LABEL], dtype=object)
    found = categories(values, max_categories=2)
    assert [(name, idx.tolist()) for name, idx in found] == [
        ("x", [0, 1, 2]), ("y", [3, 4]), (OTHER_LABEL, [5, 6]), (NONE_LABEL, [7])]
    assert categories(np.array([], dtype=object)) == []


def test_hover_texts_are_escaped():
    table = map_table([MapPoint("image", "a", 0, 0), MapPoint("image", "q", 0, 0)])
    texts = hover_texts(table, {"a": _image("a", title="<b>x</b> & y", artist="A")})
    assert texts == ["&lt;b&gt;x&lt;/b&gt; &amp; y<br>A", "q"]


def test_category_colours():
    from hitl.views.map_view import PALETTE, STATUS_COLOURS, category_colours

    colours = category_colours(["b", "a", NONE_LABEL, OTHER_LABEL], "artist")
    assert colours["b"] == PALETTE[0] and colours["a"] == PALETTE[1]
    assert colours[NONE_LABEL] != colours[OTHER_LABEL] and NONE_LABEL not in PALETTE
    assert category_colours(["confirm", NO_LINKS], "status") == {
        "confirm": STATUS_COLOURS["confirm"], NO_LINKS: STATUS_COLOURS[NO_LINKS]}
    with pytest.raises(ValueError, match="categories"):
        category_colours([str(i) for i in range(len(PALETTE) + 1)], "artist")


def test_recolouring_keeps_the_selection_and_a_new_kind_clears_it():
    from hitl.views.map_view import kept_selection

    assert kept_selection([], None, [5, 3, 5], ("image", "cluster")) == [3, 5]
    assert kept_selection([3, 5], ("image", "cluster"), [], ("image", "artist")) == [3, 5]
    assert kept_selection([3, 5], ("image", "cluster"), [7], ("image", "artist")) == [7]
    assert kept_selection([3, 5], ("image", "cluster"), [], ("region", "cluster")) == []
    assert kept_selection([3, 5], ("image", "cluster"), [], ("image", "cluster")) == []  # cleared


def test_batch_of_a_selection_judges_only_unreviewed_links_among_it():
    from db.records import ImageRecord
    from db.store import Store
    from engine.types import IDENTITY_AFFINE, Box, ModelRef, PairMatch
    from hitl.views.map_view import judge_unreviewed, links_among

    store = Store(":memory:")
    store.add_images([ImageRecord(i, i, f"/x/{i}.jpg", 10, 10) for i in "abcd"])
    store.add_model(ModelRef("m", "m"))
    run = store.start_run("m", {})
    box = Box(0, 0, 5, 5)
    store.add_links(run, [PairMatch(a, b, box, box, IDENTITY_AFFINE, 0.5, 4)
                          for a, b in ("ab", "bc", "cd", "ac")])
    store.add_verdict(4, "reject", "ana")
    among = links_among(store.list_links(), ["a", "b", "c"])
    assert [lk.link_id for lk in among] == [1, 2, 4]
    assert len(judge_unreviewed(store, among, "confirm", "ben")) == 2
    assert [store.link_status(i) for i in (1, 2, 3, 4)] == ["confirm", "confirm", "unreviewed", "reject"]
