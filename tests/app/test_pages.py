"""Every page of the app renders on a small generated project; review writes the log.

Runs the real app script with `streamlit.testing.v1.AppTest` (no browser), the project
given through ``ARTMINER_PROJECT`` exactly as ``artminer app`` passes it.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db.store import Store
from tests.app.project_fixture import HOSTILE_TITLE, build_app_project

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
PAGES = ("pages/review.py", "pages/map.py", "pages/clusters.py", "pages/query.py",
         "pages/training.py", "pages/propagation.py", "pages/team.py")
TIMEOUT = 60  # first run imports torch; later runs take well under a second


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return build_app_project(tmp_path_factory.mktemp("app"))


@pytest.fixture
def project(template, tmp_path) -> Path:
    """A fresh copy of the project file per test; the images are shared through a link to
    their folder (paths under a project's folder are stored relative to it)."""
    copy = tmp_path / "artminer.duckdb"
    shutil.copyfile(template, copy)
    (tmp_path / "demo").symlink_to(template.parent / "demo", target_is_directory=True)
    return copy


@pytest.fixture
def app(project, monkeypatch) -> AppTest:
    monkeypatch.setenv("ARTMINER_PROJECT", str(project))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["annotator"] = "tester"
    return at


def _texts(at: AppTest) -> str:
    return "\n".join(t.value for t in at.text)


def _markdown(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in [*at.markdown, *at.caption, *at.title, *at.subheader])


TITLES = dict(zip(PAGES, ("Review", "Map", "Clusters", "Query", "Training", "Propagation", "Team")))


def test_entry_shows_project_annotator_model_and_run(app, project):
    app.run()
    assert not app.exception
    sidebar = "\n".join(t.value for t in app.sidebar.text)
    assert str(project) in sidebar and "Annotator: tester" in sidebar
    assert "Active model: effnet-lite0" in sidebar and "Discovery run: #1 (done" in sidebar


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(app, page):
    app.run()
    app.switch_page(page).run()
    assert not app.exception, app.exception
    assert [t.value for t in app.title] == [TITLES[page]]
    assert "Annotator: tester" in "\n".join(t.value for t in app.sidebar.text)  # via the entry


def test_annotator_is_asked_once(project, monkeypatch):
    monkeypatch.setenv("ARTMINER_PROJECT", str(project))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.text_input(key="annotator_input") is not None
    at.text_input(key="annotator_input").input("Margit")
    next(b for b in at.button if b.label == "Start reviewing").click().run()
    assert at.session_state["annotator"] == "Margit"
    assert [t.value for t in at.title] == ["Review"]  # on to work
    assert at.query_params["annotator"] in ("Margit", ["Margit"])  # a reload keeps the name


def test_no_project_asks_for_one(monkeypatch):
    monkeypatch.delenv("ARTMINER_PROJECT", raising=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("Open a project file" in i.value for i in at.info)


def test_review_confirm_reject_undo_write_the_log(app, project):
    store = Store(project)
    app.run()
    first = store.list_links(status="unreviewed", limit=1)[0]  # score order: the queue's head
    assert f"Link #{first.link_id}" in _texts(app)
    assert "aligned agreement 0.61" in _texts(app)  # the fixture's true links were measured

    app.text_input(key="review_note").input("same cat")
    app.button(key="confirm").click().run()
    assert not app.exception
    log = store.list_verdicts()
    assert [(v.target_id, v.verdict, v.annotator, v.note) for v in log] == [
        (first.link_id, "confirm", "tester", "same cat")]
    second = store.list_links(status="unreviewed", limit=1)[0]
    assert f"Link #{second.link_id}" in _texts(app)  # straight on to the next candidate

    app.button(key="reject").click().run()
    log = store.list_verdicts()
    assert (log[-1].target_id, log[-1].verdict, log[-1].note) == (second.link_id, "reject", None)

    app.button(key="undo").click().run()
    log = store.list_verdicts()
    assert (log[-1].verdict, log[-1].revokes, log[-1].annotator) == ("revoke", log[-2].verdict_id,
                                                                       "tester")
    assert store.link_status(second.link_id) == "unreviewed"
    assert f"Link #{second.link_id}" in _texts(app)  # the undone link is shown again
    assert store.link_status(first.link_id) == "confirm"


def test_review_difference_view_modes_render(app):
    app.run()
    assert not app.exception
    assert not any("aligned by the link's affine" in c.value for c in app.caption)  # off: no cost
    app.toggle(key="review_diff_on").set_value(True).run()
    assert any("aligned by the link's affine" in c.value for c in app.caption)
    for mode in ("flicker", "swipe", "differences"):
        app.radio(key="review_diff_mode").set_value(mode).run()
        assert not app.exception, mode
        if mode == "swipe":
            app.slider(key="review_swipe").set_value(0.2).run()
            assert not app.exception


def test_review_matched_points_or_a_note_for_links_without(app, project):
    store = Store(project)
    app.run()
    assert not any("matched points" in c.value.lower() for c in app.caption)  # off: no cost
    app.toggle(key="review_points_on").set_value(True).run()
    assert not app.exception
    assert any("16 matched points of" in c.value for c in app.caption)
    bare = next(lk for lk in store.list_links(inliers=True) if not lk.match.inliers)  # a false link
    app.session_state["review_focus"] = bare.link_id
    app.run()
    assert not app.exception
    assert any("No matched points stored for this link (re-run discovery" in c.value for c in app.caption)


def test_review_zoom_cuts_tile_pyramids_once(app, project):
    app.run()
    assert not (project.parent / "artminer-data" / "tiles").exists()  # off: nothing cut
    app.toggle(key="review_zoom_on").set_value(True).run()
    assert not app.exception
    assert any("Scroll to zoom, drag to pan" in c.value for c in app.caption)
    pyramids = sorted((project.parent / "artminer-data" / "tiles").iterdir())
    assert len(pyramids) == 2 and all((p / "pyramid.json").is_file() for p in pyramids)


def test_review_outlines_a_stored_shared_detail(app, project):
    from db.records import LinkMaskRecord

    store = Store(project)
    first = store.list_links(status="unreviewed", limit=1)[0]
    app.run()
    assert not any("shared detail" in c.value for c in app.caption)
    box = first.box_a
    square = ((box.x0 + 2, box.y0 + 2), (box.x1 - 2, box.y0 + 2), (box.x1 - 2, box.y1 - 2))
    store.save_link_masks([LinkMaskRecord(first.link_id, square, square, True)])
    app.run()
    assert not app.exception
    assert any("the shared detail in A and in B" in c.value for c in app.caption)


def test_review_shows_hostile_metadata_as_text_only(app, project):
    store = Store(project)
    hostile = next(im for im in store.list_images() if im.title == HOSTILE_TITLE)
    link = store.list_links(image_id=hostile.image_id, status="unreviewed", limit=1)[0]
    app.run()
    app.session_state["review_focus"] = link.link_id
    app.run()
    assert HOSTILE_TITLE in _texts(app)
    assert "<script>" not in _markdown(app) and "**bold**" not in _markdown(app)


def test_clusters_confirm_and_split(app, project):
    store = Store(project)
    app.switch_page("pages/clusters.py")
    app.run()
    app.switch_page("pages/clusters.py").run()
    cluster = store.list_clusters()[0]
    before = store.status_counts()["unreviewed"]
    app.button(key=f"cluster_confirm_{cluster.cluster_id}").click().run()
    assert not app.exception
    assert store.cluster_status(cluster.cluster_id) == "confirm"
    # its links left the queue, and the undo button brings them back
    assert {store.link_status(i) for i in cluster.link_ids} == {"confirm"}
    assert store.status_counts()["unreviewed"] == before - len(cluster.link_ids)
    app.button(key="clusters_undo").click().run()
    assert store.cluster_status(cluster.cluster_id) == "unreviewed"
    assert store.status_counts()["unreviewed"] == before

    other = store.list_clusters(status="unreviewed")[0]
    first = other.regions[0].region.image_id
    app.checkbox(key=f"member_{other.cluster_id}_{first}").check().run()
    app.button(key=f"split_{other.cluster_id}").click().run()
    assert not app.exception
    assert store.cluster_status(other.cluster_id) == "reject"
    geometry = store.history("cluster", other.cluster_id)[-1].geometry
    assert len(geometry["split_into"]) == 2
    assert geometry["groups"][0] == [r.region_id for r in other.regions if r.region.image_id == first]


def test_propagation_of_a_confirmed_cluster(app, project):
    store = Store(project)
    cluster = store.list_clusters()[-1]
    for link_id in cluster.link_ids:
        store.add_verdict(link_id, "confirm", "tester")
    store.add_verdict(cluster.cluster_id, "confirm", "tester", target_kind="cluster")
    app.run()
    app.switch_page("pages/propagation.py").run()
    assert not app.exception
    assert f"{len(cluster.images)} artworks" in _texts(app)
    assert len(app.get("download_button")) >= 3


@pytest.mark.parametrize("colour", ["cluster", "group", "artist", "date", "medium", "status"])
def test_map_colourings(app, colour):
    app.run()
    app.switch_page("pages/map.py").run()
    app.selectbox(key="map_colour").select(colour).run()
    assert not app.exception
    app.radio(key="map_kind").set_value("region").run()
    assert not app.exception


def test_map_style_mode_shows_the_style_map(app, project):
    store = Store(project)
    ids = [im.image_id for im in store.list_images()]
    app.run()
    app.switch_page("pages/map.py").run()
    app.radio(key="map_kind").set_value("style").run()
    assert any("No style map" in i.value for i in app.info)
    store.save_style_map("effnet-lite0", ids, [(float(i), float(i % 3)) for i in range(len(ids))],
                         [i % 2 for i in range(len(ids))])
    app.selectbox(key="map_colour").select("group").run()
    assert not app.exception
    assert f"{len(ids)} points" in _texts(app)


def test_clusters_filter_by_style_group(app, project):
    store = Store(project)
    app.run()
    app.switch_page("pages/clusters.py").run()
    shown = next(t.value for t in app.text if t.value.endswith(" clusters"))
    one = store.list_clusters()[0]
    store.save_style_map("effnet-lite0", list(one.images), [(0.0, 0.0)] * len(one.images), [7] * len(one.images))
    app.run()
    app.multiselect(key="clusters_style").select(7).run()
    assert not app.exception
    filtered = next(t.value for t in app.text if t.value.endswith(" clusters"))
    assert filtered != shown and filtered.startswith(("1 of", "2 of", "3 of"))


def test_training_page_follows_a_running_round(app, project):
    from hitl.jobs import running_job, start_training, stop_training
    from hitl.project import ProjectPaths

    code = "import time; print('iteration 1/3 loss 0.5', flush=True); time.sleep(30)"
    job = start_training(project, command=[sys.executable, "-c", code])
    try:
        end = time.monotonic() + 20
        while "iteration 1/3" not in job.log_path.read_text() and time.monotonic() < end:
            time.sleep(0.05)
        app.run()
        app.switch_page("pages/training.py").run()
        assert not app.exception
        assert any("A training round is running" in i.value for i in app.info)
        assert "iteration 1/3 loss 0.5" in "\n".join(c.value for c in app.code)
        assert not any(b.label == "Start a training round" for b in app.button)  # one at a time
    finally:
        stop_training(job)
        paths = ProjectPaths(project.resolve())
        end = time.monotonic() + 20
        while running_job(paths) is not None and time.monotonic() < end:
            time.sleep(0.05)


def test_query_hit_confirmed_as_link(app, project):
    from engine.types import Box, Detection

    store = Store(project)
    query, hit = store.list_images()[:2]
    app.run()
    app.switch_page("pages/query.py").run()
    assert not app.exception
    app.session_state["query_results"] = {
        "image": query.image_id, "box": [10.0, 10.0, 60.0, 50.0], "run": None, "confirmed": {},
        "hits": [Detection(hit.image_id, Box(5, 5, 40, 40), 0.7)]}
    app.run()
    app.button(key="query_confirm_0").click().run()
    assert not app.exception
    link = store.list_links(image_id=hit.image_id, status="confirm")[0]
    assert (link.image_a, link.box_b, store.get_run(link.run_id).kind) == (
        query.image_id, Box(5, 5, 40, 40), "query")
    assert store.link_history(link.link_id)[0].annotator == "tester"
    assert f"confirmed as link #{link.link_id}" in _texts(app)


def test_query_hit_rejected_and_confirm_all_above(app, project):
    from engine.types import Box, Detection

    store = Store(project)
    query, *others = store.list_images()[:4]
    app.run()
    app.switch_page("pages/query.py").run()
    app.session_state["query_results"] = {
        "image": query.image_id, "box": [10.0, 10.0, 60.0, 50.0], "run": None, "confirmed": {},
        "hits": [Detection(im.image_id, Box(5, 5, 40, 40), score)
                 for im, score in zip(others, (0.9, 0.8, 0.2))]}
    app.run()
    app.button(key="query_reject_1").click().run()
    app.number_input(key="query_floor").set_value(0.5).run()
    app.button(key="query_confirm_above").click().run()  # only hit 0: hit 1 is judged, hit 2 below
    assert not app.exception
    status = {lk.image_b: lk.status for lk in store.list_links(run_id=store.list_runs(kind="query")[0].run_id)}
    assert status == {others[0].image_id: "confirm", others[1].image_id: "reject"}


def _session(project, monkeypatch, name: str) -> AppTest:
    monkeypatch.setenv("ARTMINER_PROJECT", str(project))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["annotator"] = name
    return at


def test_double_review_is_blind_and_a_dispute_is_adjudicated(project, monkeypatch):
    from hitl.team import set_double_review_share

    store = Store(project)
    set_double_review_share(store, 1.0)
    ana, ben = _session(project, monkeypatch, "ana"), _session(project, monkeypatch, "ben")
    ana.run()
    first = store.list_links(status="unreviewed", limit=1)[0]
    ana.button(key="confirm").click().run()
    assert store.link_status(first.link_id) == "confirm"
    ben.run()  # ben's queue starts with ana's link, her verdict hidden
    assert f"Link #{first.link_id}" in _texts(ben)
    assert "status: hidden" in _texts(ben) and "ana" not in _texts(ben)
    ben.button(key="reject").click().run()
    assert store.link_status(first.link_id) == "disputed"

    ben.switch_page("pages/team.py").run()
    assert not ben.exception
    assert "Disagreements to adjudicate (1)" in _markdown(ben)
    ben.session_state["annotator"] = "cem"  # the adjudicator takes over this browser
    ben.run()
    ben.button(key=f"adjudicate_reject_{first.link_id}").click().run()
    assert store.link_status(first.link_id) == "reject"
    assert "Disagreements to adjudicate (0)" in _markdown(ben)
    assert [(v.annotator, v.role) for v in store.link_history(first.link_id)] == [
        ("ana", "review"), ("ben", "review"), ("cem", "adjudication")]


def test_direction_is_stored_with_a_confirm(app, project):
    store = Store(project)
    app.run()
    first = store.list_links(status="unreviewed", limit=1)[0]
    app.selectbox(key="review_direction").set_value("a_copies_b").run()
    app.button(key="confirm").click().run()
    assert not app.exception
    assert store.link_history(first.link_id)[-1].direction == "a_copies_b"
    assert app.selectbox(key="review_direction").value is None  # not carried to the next link


def test_map_draws_the_thumbnail_atlas(app, project):
    from hitl.project import ProjectPaths

    app.run()
    app.switch_page("pages/map.py").run()
    app.radio(key="map_draw").set_value("thumbnails").run()
    assert not app.exception, app.exception
    thumbs = ProjectPaths(project).data_dir / "thumbs"
    assert len(list(thumbs.glob("*.jpg"))) == Store(project).count_images()  # made once, kept


def test_map_draws_detail_regions_as_their_crops(app, project):
    from hitl.project import ProjectPaths

    store = Store(project)
    regions = {(lk.image_a, tuple(lk.box_a.as_list())) for lk in store.list_links()} | {
        (lk.image_b, tuple(lk.box_b.as_list())) for lk in store.list_links()}
    app.run()
    app.switch_page("pages/map.py").run()
    app.radio(key="map_kind").set_value("region").run()
    app.radio(key="map_draw").set_value("thumbnails").run()
    assert not app.exception, app.exception
    crops = ProjectPaths(project).data_dir / "thumbs" / "regions"
    assert len(list(crops.glob("*.jpg"))) == len(regions)  # one crop per distinct region, kept
