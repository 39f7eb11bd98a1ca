"""End to end in a real browser: Debian chromium driven by Playwright.

Starts ``streamlit run streamlit_asgi.py`` (as ``artminer app`` does) on a free loopback port with
``ARTMINER_PROJECT`` set, sets an annotator, confirms one link and rejects another
(and answers a third with its keyboard shortcut), checks the verdict log in the project
file, draws a query box and gets results, and saves a screenshot of every page under
``test-artifacts/``. Prints two figures: confirm -> next candidate shown, and the map's
render time with 10,000 points.

The project is generated (`project_fixture.build_app_project`); to run on the real
pipeline instead, set ``ARTMINER_TEST_PROJECT`` to a project made with
``artminer demo --out DIR`` and ``artminer discover --project DIR/artminer.duckdb``
(the test writes verdicts into it).

Run: ``python -m pytest -m browser tests/app/test_browser.py -s``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.store import Store
from hitl.project import active_model_id
from hitl.queue import next_links
from tests.app.project_fixture import build_app_project, build_map_project

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ANNOTATOR = "Browser Tester"
WAIT_MS = 90_000  # generous: the first query loads the model and the features on 2 cores

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

if sync_playwright is None:
    pytest.skip("Python playwright is not installed (pip install playwright)", allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    given = os.environ.get("ARTMINER_TEST_PROJECT")
    if given:
        return Path(given).resolve()
    return build_app_project(tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def server(project, tmp_path_factory) -> Iterator[str]:
    port = _free_port()
    # the map test opens a second project by URL: both live under pytest's base folder
    env = dict(os.environ, ARTMINER_PROJECT=str(project),
               ARTMINER_PROJECTS=str(tmp_path_factory.getbasetemp()))
    # as `artminer app` serves it: the ASGI entry, page URLs without 404s
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "streamlit_asgi.py"),
           "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true"]
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "streamlit.log", "w")  # the server's output, for a failed run
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        log.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"streamlit did not come up at {url}")


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _new_page(browser) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    return page


def _settle(page: Page) -> None:
    """Wait until the script run is over and its pictures and charts are drawn."""
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    _images_loaded(page)
    page.wait_for_function("Array.from(document.querySelectorAll('.stPlotlyChart'))"
                           ".every(c => c.querySelector('.main-svg'))")
    page.wait_for_timeout(500)  # skeletons give way, toasts fade in


def _shot(page: Page, name: str) -> None:
    _settle(page)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _link_header(page: Page, link_id: int):
    return page.get_by_text(re.compile(rf"^Link #{link_id}\s"))


# Streamlit names a media file by a hash of its bytes and deletes the files a run no longer
# shows. When a rerun is cut short by the next one, a picture can be deleted before the
# browser fetched it, then shown again under the same URL: React keeps the broken <img>
# and the browser never asks again (seen once in CI on the map's lasso batch). The check
# re-requests a broken picture (the query string is ignored by the media handler), so a
# picture that the server really cannot serve still fails the wait.
_ALL_IMAGES_LOADED = """() => {
    let ok = true;
    for (const i of document.images) {
        if (!i.complete) { ok = false; continue; }
        if (i.naturalWidth > 0) continue;
        ok = false;
        const tries = Number(i.dataset.retries || 0);
        if (tries < 20) {
            i.dataset.retries = tries + 1;
            i.src = i.src.split('?')[0] + '?retry=' + (tries + 1);
        }
    }
    return ok;
}"""


def _images_loaded(page: Page) -> None:
    page.wait_for_function(_ALL_IMAGES_LOADED, polling=500)


def _goto_page(page: Page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title).wait_for()


def test_review_query_and_every_page(server, browser, project):
    store = Store(project)
    model = active_model_id(store)
    queue = [lk.link_id for lk in next_links(store, "score", limit=3, model_id=model)]
    assert len(queue) == 3, "the project needs at least three unreviewed links"
    page = _new_page(browser)

    page.goto(server)
    page.get_by_label("Your name").fill(ANNOTATOR)
    page.get_by_role("button", name="Start reviewing").click()
    _link_header(page, queue[0]).wait_for()
    _images_loaded(page)
    page.get_by_text(f"Annotator: {ANNOTATOR}").wait_for()
    _shot(page, "review")

    start = time.perf_counter()
    page.locator(".st-key-confirm button").click()
    _link_header(page, queue[1]).wait_for()
    shown = time.perf_counter() - start
    _images_loaded(page)
    loaded = time.perf_counter() - start
    print(f"\nconfirm -> next candidate shown: {shown * 1000:.0f} ms "
          f"(its images loaded: {loaded * 1000:.0f} ms)")

    page.locator(".st-key-reject button").click()
    _link_header(page, queue[2]).wait_for()
    page.evaluate("document.activeElement && document.activeElement.blur()")  # keys to the page
    page.keyboard.press("u")  # Unsure by its shortcut
    page.wait_for_function(f"!document.body.innerText.includes('Link #{queue[2]} ')")

    log = [(v.target_id, v.verdict, v.annotator) for v in store.list_verdicts()]
    assert log[-3:] == [(queue[0], "confirm", ANNOTATOR), (queue[1], "reject", ANNOTATOR),
                        (queue[2], "unsure", ANNOTATOR)]

    _goto_page(page, "Query")
    _draw_query_box(page)
    page.locator(".st-key-query_run button").click()
    page.get_by_text(re.compile(r"^[1-9]\d* results$")).wait_for()
    page.get_by_role("button", name="Confirm as link").first.wait_for()
    _images_loaded(page)
    _shot(page, "query")

    _goto_page(page, "Clusters")
    before = store.status_counts(model)["unreviewed"]
    page.locator("[class*='st-key-cluster_confirm_'] button").first.click()
    page.get_by_text(re.compile(r"^Cluster #\d+: confirm, with [1-9]\d* unreviewed link")).wait_for()
    after = store.status_counts(model)["unreviewed"]
    assert after < before  # its links left the queue, and the sidebar says so
    page.get_by_text(f"Links: {after} to review", exact=False).wait_for()
    _images_loaded(page)
    _shot(page, "clusters")
    page.locator(".st-key-clusters_undo button").click()
    page.get_by_text(re.compile(r"^Undid your confirm on cluster #\d+")).wait_for()
    assert store.status_counts(model)["unreviewed"] == before
    page.get_by_text(f"Links: {before} to review", exact=False).wait_for()
    page.locator("[class*='st-key-cluster_confirm_'] button").first.click()  # again, for Propagation
    page.get_by_text(re.compile(r"^Cluster #\d+: confirm, with")).wait_for()
    for title in ("Map", "Training", "Propagation"):
        _goto_page(page, title)
        _shot(page, title.lower())
    assert page.locator('[data-testid="stException"]').count() == 0


def test_review_fits_one_laptop_screen(server, browser, project):
    """At 1366x768 the whole evidence is on screen without scrolling; confirm -> next timed."""
    store = Store(project)
    queue = [lk.link_id for lk in next_links(store, "score", limit=2, model_id=active_model_id(store))]
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{server}/?annotator=Laptop")
    _link_header(page, queue[0]).wait_for()
    _settle(page)
    evidence = page.locator(".st-key-review_evidence")
    pictures = evidence.locator('[data-testid="stImage"] img')
    pictures.nth(4).wait_for()  # under load the last pictures arrive after the header
    assert pictures.count() == 5  # A, B, A's region, B's region, the overlay
    for what in (pictures, evidence.locator('[data-testid="stText"]'),
                 page.locator(".st-key-confirm button"), page.locator('[data-testid="stProgress"]')):
        for i in range(what.count()):
            box = what.nth(i).bounding_box()
            assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 768, (what, i, box)
    captions = evidence.inner_text()
    image = store.get_image(store.get_link(queue[0]).image_a)
    for value in (image.title, image.artist, image.date, image.medium, image.collection):
        assert value in captions
    page.get_by_text("0 answered this session", exact=False).wait_for()
    _shot(page, "review-1366x768")
    start = time.perf_counter()
    page.locator(".st-key-confirm button").click()
    _link_header(page, queue[1]).wait_for()
    shown = time.perf_counter() - start
    page.get_by_text("1 answered this session", exact=False).wait_for()
    print(f"\n1366x768 layout: confirm -> next candidate shown: {shown * 1000:.0f} ms")
    _settle(page)
    page.locator(".st-key-review_previous button").first.click()  # back to the one just answered
    _link_header(page, queue[0]).wait_for()
    page.close()


def _draw_query_box(page: Page) -> None:
    """Box-select a detail on the query picture by dragging the mouse."""
    area = page.locator(".js-plotly-plot .nsewdrag").first
    area.wait_for()
    box = area.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.4, steps=6)
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=6)
    page.mouse.up()
    page.wait_for_function(
        "Number(document.querySelector('.st-key-query_x1 input')?.value) > 0")


def _point_position(page: Page, trace: int = 0, index: int = 0) -> tuple[float, float]:
    """Page coordinates of one point of the map chart (plotly's own axis mapping)."""
    page.locator(".js-plotly-plot .legend").wait_for()
    return tuple(page.evaluate(
        """([t, i]) => { const gd = document.querySelector('.js-plotly-plot');
             const fl = gd._fullLayout, d = gd._fullData[t], box = gd.getBoundingClientRect();
             return [box.left + fl.xaxis._offset + fl.xaxis.l2p(d.x[i]),
                     box.top + fl.yaxis._offset + fl.yaxis.l2p(d.y[i])]; }""", [trace, index]))


def test_map_click_opens_a_point_recolouring_keeps_it_and_lasso_batch(server, browser, tmp_path_factory):
    project = build_app_project(tmp_path_factory.mktemp("mapclick"))
    store = Store(project)
    page = _new_page(browser)
    page.goto(f"{server}/map?project={project}&annotator=Clicker")
    page.get_by_role("heading", name="Map").wait_for()
    _settle(page)
    x, y = _point_position(page)
    page.mouse.move(x, y)
    page.mouse.click(x, y)  # the default mode: no tool chosen first
    page.get_by_text("1 point(s) selected", exact=False).wait_for()
    page.locator(".st-key-map_colour").click()
    page.get_by_role("option", name="artist").click()
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    page.wait_for_timeout(1500)  # let a redraw's own selection reset reach the server, if any
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    assert page.get_by_text("1 point(s) selected", exact=False).count() == 1

    # lasso around the whole map: every image, then confirm the links among them at once
    page.locator('.modebar-btn[data-val="lasso"]').first.click()
    plot = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    corners = [(0.02, 0.02), (0.98, 0.02), (0.98, 0.98), (0.02, 0.98), (0.02, 0.03)]
    page.mouse.move(plot["x"] + plot["width"] * 0.02, plot["y"] + plot["height"] * 0.02)
    page.mouse.down()
    for fx, fy in corners:
        page.mouse.move(plot["x"] + plot["width"] * fx, plot["y"] + plot["height"] * fy, steps=8)
    page.mouse.up()
    unreviewed = store.status_counts()["unreviewed"]
    page.get_by_text(f"link(s) among them, {unreviewed} unreviewed", exact=False).wait_for()
    page.locator(".st-key-map_batch_confirm button").click()
    page.get_by_text(re.compile(r"link\(s\) among them, 0 unreviewed")).wait_for()
    assert store.status_counts()["unreviewed"] == 0
    assert {v.note for v in store.list_verdicts()} == {"map selection"}
    _shot(page, "map")
    assert page.locator('[data-testid="stException"]').count() == 0


def test_map_renders_10k_points(server, browser, tmp_path_factory):
    project = build_map_project(tmp_path_factory.mktemp("map10k"), n=10_000)
    page = _new_page(browser)
    url = f"{server}/map?project={project}&annotator=Timer"

    def load() -> tuple[float, float]:
        start = time.perf_counter()
        page.goto(url)
        page.get_by_text("10000 points").wait_for()  # written after the chart: server done
        served = time.perf_counter() - start
        page.locator(".js-plotly-plot .legend").wait_for()
        page.locator(".js-plotly-plot canvas").first.wait_for(state="attached")
        return served, time.perf_counter() - start

    cold_served, cold = load()  # new session, map data read from the project file
    warm_served, warm = load()  # reload: map data from the app's cache
    page.locator(".st-key-map_colour").click()  # a second colouring of the same points
    start = time.perf_counter()
    page.get_by_role("option", name="artist").click()
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .legend .traces').length >= 12")
    recolour = time.perf_counter() - start
    print(f"\nmap with 10,000 points: first load {cold * 1000:.0f} ms (script done at "
          f"{cold_served * 1000:.0f} ms), reload {warm * 1000:.0f} ms (script done at "
          f"{warm_served * 1000:.0f} ms), recolour {recolour * 1000:.0f} ms")
    _shot(page, "map-10k")
    assert page.locator('[data-testid="stException"]').count() == 0
    shutil.rmtree(project.parent, ignore_errors=True)


def _page_at(browser, url: str, width: int = 1366, height: int = 768):
    """A page in a browser context of its own: another annotator, other cookies and session."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    return context, page


def test_double_review_blind_two_annotators_agreement_and_adjudication(server, browser, tmp_path_factory):
    from hitl.team import set_double_review_share

    project = build_app_project(tmp_path_factory.mktemp("team"))
    store = Store(project)
    model = active_model_id(store)
    # a scripted set with a known answer: 8 of 10 agreed, 4/4 each way -> κ = 0.60, α = 0.62
    scripted = [lk.link_id for lk in store.list_links(order="score")][-10:]
    ana = ["confirm"] * 5 + ["reject"] * 5
    ben = ["confirm"] * 4 + ["reject"] + ["confirm"] + ["reject"] * 4
    for link_id, a, b in zip(scripted, ana, ben):
        store.add_verdict(link_id, a, "ana")
        store.add_verdict(link_id, b, "ben")
    set_double_review_share(store, 1.0)
    head = next_links(store, "score", limit=1, model_id=model)[0].link_id
    base = f"{server}/?project={project}"

    ctx_c, cem = _page_at(browser, f"{server}/team?project={project}&annotator=cem")
    cem.get_by_role("heading", name="Team").wait_for()
    cem.get_by_text("0.62", exact=True).first.wait_for()  # Krippendorff's α
    pairs = cem.locator('[data-testid="stTable"]').inner_text()
    assert re.search(r"ana\s+ben\s+10\s+8\s+0\.60", pairs), pairs  # Cohen's κ, ana-ben
    _shot(cem, "team-agreement")

    ctx_a, page_a = _page_at(browser, f"{base}&annotator=ana")
    _link_header(page_a, head).wait_for()
    page_a.locator(".st-key-confirm button").click()
    page_a.wait_for_function(f"!document.body.innerText.includes('Link #{head} ')")

    ctx_b, page_b = _page_at(browser, f"{base}&annotator=ben")
    _link_header(page_b, head).wait_for()  # ana's link first, for ben's blind second look
    page_b.get_by_text("status: hidden", exact=False).wait_for()
    page_b.get_by_text("hidden until you answer", exact=False).wait_for()
    assert "confirm" not in page_b.locator(".st-key-review_evidence").inner_text()
    page_b.locator(".st-key-reject button").click()
    page_b.wait_for_function(f"!document.body.innerText.includes('Link #{head} ')")
    assert store.link_status(head) == "disputed"

    cem.reload()
    cem.get_by_text("Disagreements to adjudicate (1)").wait_for()
    cem.locator(f".st-key-adjudicate_reject_{head} button").click()
    cem.get_by_text("Disagreements to adjudicate (0)").wait_for()
    assert store.link_status(head) == "reject"
    assert [(v.annotator, v.role) for v in store.link_history(head)] == [
        ("ana", "review"), ("ben", "review"), ("cem", "adjudication")]
    for ctx in (ctx_a, ctx_b, ctx_c):
        ctx.close()


def test_training_progress_shows_within_seconds_and_stop_marks_the_round(server, browser, tmp_path_factory):
    """A real round on a tiny demo: its first phase and step reach the page, Stop ends it."""
    from hitl.demo import DemoConfig, build_demo
    from hitl.ingest import ingest_paths

    root = tmp_path_factory.mktemp("train")
    demo = build_demo(root, seed=2, n_images=8, n_motifs=2, config=DemoConfig(image_size=(240, 180)),
                      progress=False)
    project = root / "artminer.duckdb"
    with Store(project) as store:
        ingest_paths(store, [demo.images_dir], metadata_csv=demo.metadata, progress=False)
        store.attach_annotations(root / "ground_truth.json", "artminer")
    _, page = _page_at(browser, f"{server}/training?project={project}&annotator=Trainer", 1400, 1000)
    page.get_by_role("heading", name="Training").wait_for()
    start = time.perf_counter()
    page.get_by_role("button", name="Start a training round").click()
    page.get_by_text(re.compile(r"^Starting the round's process")).wait_for()
    first = time.perf_counter() - start
    page.get_by_text(re.compile(r"^Phase \d/7: ")).wait_for()
    phase = time.perf_counter() - start
    page.get_by_text(re.compile(r"^Phase \d/7: .* — \w.* \d+/\d+")).wait_for()  # a step's done/total
    step = time.perf_counter() - start
    print(f"\ntraining page after Start: first progress {first:.1f} s, first phase of the round's "
          f"own {phase:.1f} s, first step with done/total {step:.1f} s")
    _shot(page, "training-progress")
    page.get_by_role("button", name="Stop this round").click()
    page.get_by_text(re.compile(r"^stopped$")).first.wait_for(state="attached")  # rounds table
    with Store(project) as store:
        (rnd,) = store.list_rounds()
    assert rnd.status == "failed" and rnd.error.startswith("stopped")
    assert first < 10, f"progress took {first:.1f} s to show"


def test_map_atlas_of_10k_thumbnails(server, browser, tmp_path_factory):
    """First render, pan/zoom frame time and hover-to-preview of the atlas; a click opens a point."""
    project = build_map_project(tmp_path_factory.mktemp("atlas10k"), n=10_000)
    page = _new_page(browser)
    page.goto(f"{server}/map?project={project}&annotator=Atlas")
    page.get_by_text("10000 points").wait_for()
    start = time.perf_counter()
    page.locator(".st-key-map_draw").get_by_text("thumbnails").click()
    canvas = page.locator('[data-testid="stDeckGlJsonChart"] canvas').first
    canvas.wait_for()
    page.get_by_text("Scroll to zoom", exact=False).wait_for()
    page.wait_for_function("""() => { const c = document.querySelector('[data-testid="stDeckGlJsonChart"] canvas');
        return c && c.width > 0; }""")
    page.wait_for_timeout(300)  # the atlas texture decodes, the first frame is drawn
    first = time.perf_counter() - start
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    # hover, then click: the view is centred on the middle of the map, where points are densest
    page.mouse.move(cx - 40, cy - 40)
    page.wait_for_timeout(300)
    start = time.perf_counter()
    page.mouse.move(cx, cy)
    page.locator(".deck-tooltip").get_by_text("Artwork", exact=False).wait_for()
    hover = time.perf_counter() - start
    picture = page.locator(".deck-tooltip .am-hover")  # the hovered picture, enlarged
    assert picture.evaluate("e => getComputedStyle(e).backgroundImage").startswith('url("data:image/jpeg')
    assert max(picture.bounding_box()["width"], picture.bounding_box()["height"]) == pytest.approx(160, abs=1)
    page.mouse.click(cx, cy)
    page.get_by_text("1 point(s) selected", exact=False).wait_for()
    # pan and zoom: mean time between animation frames while the view moves
    page.evaluate("""() => { window.__frames = []; const tick = t => { window.__frames.push(t);
        if (window.__frames.length < 100000) window.__raf = requestAnimationFrame(tick); };
        window.__raf = requestAnimationFrame(tick); }""")
    page.mouse.move(cx, cy)
    page.mouse.down()
    for k in range(20):
        page.mouse.move(cx + 6 * k, cy + 3 * k)
    page.mouse.up()
    for _ in range(10):
        page.mouse.wheel(0, -120)
        page.wait_for_timeout(30)
    frames = page.evaluate("() => { cancelAnimationFrame(window.__raf); return window.__frames; }")
    gaps = sorted(b - a for a, b in zip(frames, frames[1:]))
    frame_ms = gaps[len(gaps) // 2] if gaps else float("nan")

    print(f"\natlas of 10,000 thumbnails: first render {first * 1000:.0f} ms, pan/zoom median frame "
          f"{frame_ms:.0f} ms, hover to preview {hover * 1000:.0f} ms")
    _shot(page, "map-atlas-10k")
    assert page.locator('[data-testid="stException"]').count() == 0
    shutil.rmtree(project.parent, ignore_errors=True)


def test_review_difference_view_and_shared_detail(server, browser, project):
    """The shared detail outlined, the difference view toggled on, flicker and swipe."""
    from db.records import LinkMaskRecord

    store = Store(project)
    model = active_model_id(store)
    link = next_links(store, "score", limit=1, model_id=model)[0]
    box = link.box_a
    inset = ((box.x0 + 0.2 * box.width, box.y0 + 0.2 * box.height), (box.x1 - 0.2 * box.width, box.y0 + 0.3 * box.height),
             (box.x0 + 0.5 * box.width, box.y1 - 0.2 * box.height))
    if link.link_id not in store.link_masks([link.link_id]):  # a real discovery run stores its own
        store.save_link_masks([LinkMaskRecord(link.link_id, inset, inset, True)])
    page = _new_page(browser)
    page.goto(f"{server}/?annotator=Diff%20Tester")
    _link_header(page, link.link_id).wait_for()
    page.get_by_text("the shared detail in A and in B").wait_for()
    page.get_by_text("Difference view: B finely aligned over A").click()
    page.get_by_text("A in grey; red: where aligned B differs").scroll_into_view_if_needed()
    _shot(page, "review-difference")
    page.get_by_text("flicker", exact=True).click()
    page.get_by_text("A and aligned B in turn").wait_for()
    page.get_by_text("swipe", exact=True).click()
    page.get_by_text("Swipe: A left, B right").scroll_into_view_if_needed()
    _shot(page, "review-swipe")
    assert page.locator('[data-testid="stException"]').count() == 0


def test_page_urls_open_directly_without_404s(server, browser, project):
    """Every page's own URL, typed into a fresh tab: the page shows, no request fails."""
    for title, path, shown in (("Map", "map", "map"), ("Clusters", "clusters", "clusters"),
                               ("Training", "training", "training"), ("Review", "review", "")):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})  # a new session
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        failed: list[tuple[int, str]] = []
        page.on("response", lambda r, failed=failed: failed.append((r.status, r.url)) if r.status >= 400 else None)
        page.goto(f"{server}/{path}?annotator=Direct")
        page.get_by_role("heading", name=title).wait_for()
        _settle(page)
        assert page.url.startswith(f"{server}/{shown}?"), page.url  # the page asked for (Review: the default, "/")
        assert failed == [], failed
        context.close()


def _big_scan_project(root: Path, width: int, height: int) -> tuple[Path, int, tuple]:
    """A project with a ``width`` x ``height`` scan (A) and a half-size copy of one part of it
    (B), one link between them; returns (project, link id, A -> B affine)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from engine.types import Box, ModelRef, PairMatch
    from hitl.formats.image_files import MAX_PIXELS_SETTING
    from hitl.ingest import ingest_paths

    rng = np.random.default_rng(3)
    small = (rng.random((height // 100, width // 100, 3)) * 255).astype(np.uint8)
    scan = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(scan)  # a fine grid: detail that only full resolution shows
    for x in range(0, width, 40):
        draw.line([(x, 0), (x, height)], fill=(20, 20, 20), width=1)
    for y in range(0, height, 40):
        draw.line([(0, y), (width, y)], fill=(20, 20, 20), width=1)
    images = root / "images"
    images.mkdir(parents=True)
    scan.save(images / "scan.jpg", quality=85)
    x0, y0 = width * 0.4, height * 0.4  # B: the part from (x0, y0) on, at half size
    part = scan.crop((int(x0), int(y0), int(x0) + width // 5, int(y0) + height // 5))
    part.resize((part.width // 2, part.height // 2), Image.Resampling.BILINEAR).save(images / "copy.jpg", quality=90)
    del scan, part
    affine = ((0.5, 0.0, -0.5 * int(x0)), (0.0, 0.5, -0.5 * int(y0)))
    project = root / "artminer.duckdb"
    with Store(project) as store:
        store.set_setting(MAX_PIXELS_SETTING, str(width * height + 1))
        ingest_paths(store, [images], progress=False)
        ids = {Path(im.path).name: im.image_id for im in store.list_images()}
        store.add_model(ModelRef("effnet-lite0", "effnet-lite0"))
        store.set_active_model("effnet-lite0")
        run = store.start_run("effnet-lite0", {"fixture": "big scan"})
        box_a = Box(x0 + width * 0.05, y0 + height * 0.05, x0 + width * 0.15, y0 + height * 0.15)
        box_b = Box(*(0.5 * (v - o) for v, o in zip(box_a.as_list(), (int(x0), int(y0)) * 2)))
        points = tuple((x, y, 0.5 * (x - int(x0)), 0.5 * (y - int(y0)))
                       for x in np.linspace(box_a.x0, box_a.x1, 5) for y in np.linspace(box_a.y0, box_a.y1, 4))
        (link_id,) = store.add_links(run, [PairMatch(ids["scan.jpg"], ids["copy.jpg"], box_a, box_b, affine,
                                                     0.5, 20, inliers=points)])
        store.finish_run(run)
    return project, link_id, affine


def _zoom_view(page: Page, side: str) -> tuple[float, float, float]:
    return tuple(float(v) for v in page.locator(f"canvas.am-zoom-{side}").get_attribute("data-view").split(","))


def test_review_synced_zoom_at_full_resolution(server, browser, tmp_path_factory):
    """Zoom on A moves B to the mapped place; the crops sharpen to full resolution; timed."""
    from hitl.views.zoom_view import ZoomView, mapped_view

    size = (20_000, 15_000)
    start = time.perf_counter()
    project, link_id, affine = _big_scan_project(tmp_path_factory.mktemp("bigscan"), *size)
    made = time.perf_counter() - start
    page = _new_page(browser)
    page.goto(f"{server}/?project={project}&annotator=Zoomer")
    _link_header(page, link_id).wait_for()
    start = time.perf_counter()
    page.get_by_text("Zoom both at full resolution").click()
    page.wait_for_function("() => document.querySelector('.am-zoom')?.dataset.detailA")
    page.wait_for_function("() => document.querySelector('canvas.am-zoom-b')?.dataset.view")
    first = time.perf_counter() - start  # includes cutting both pyramids, once

    def synced() -> tuple[tuple, tuple]:
        view_a, view_b = _zoom_view(page, "a"), _zoom_view(page, "b")
        expected = mapped_view(ZoomView(*view_a), affine)
        assert view_b == pytest.approx((expected.cx, expected.cy, expected.zoom), rel=1e-3, abs=0.05)
        return view_a, view_b

    before_a, before_b = synced()
    canvas = page.locator("canvas.am-zoom-a").bounding_box()
    # zoom in on A at a point left of centre: 12 wheel steps, each one animation frame apart
    page.evaluate("""() => { window.__gaps = []; let last = performance.now();
        const tick = t => { window.__gaps.push(t - last); last = t; window.__raf = requestAnimationFrame(tick); };
        window.__raf = requestAnimationFrame(tick); window.__artminerZoom.frames.length = 0; }""")
    page.mouse.move(canvas["x"] + canvas["width"] * 0.3, canvas["y"] + canvas["height"] * 0.6)
    for _ in range(12):
        page.mouse.wheel(0, -200)
        page.wait_for_timeout(20)
    gaps = page.evaluate("() => { cancelAnimationFrame(window.__raf); return window.__gaps.slice(1); }")
    draws = sorted(page.evaluate("() => window.__artminerZoom.frames"))
    after_a, after_b = synced()
    assert after_a[2] > 10 * before_a[2] and after_a[:2] != before_a[:2]  # zoomed about the cursor
    assert after_b[2] > 10 * before_b[2] and after_b[:2] != before_b[:2]  # B followed

    # the settled view comes back as full-resolution crops of exactly the visible areas
    page.wait_for_function("() => document.querySelector('.am-zoom').dataset.detailA.endsWith('@0')")
    page.wait_for_function("() => document.querySelector('.am-zoom').dataset.detailB.endsWith('@0')")
    for side in "ab":
        detail = page.locator(".am-zoom").get_attribute(f"data-detail-{side}").split("@")[0]
        x0, y0, x1, y1 = (float(v) for v in detail.split(","))
        vx0, vy0, vx1, vy1 = (float(v) for v in page.locator(f"canvas.am-zoom-{side}").get_attribute("data-visible").split(","))
        assert x0 <= max(vx0, 0) + 1 and y0 <= max(vy0, 0) + 1 and x1 >= vx1 - 1 and y1 >= vy1 - 1, side

    # a drag on B pans A through the inverse affine
    canvas_b = page.locator("canvas.am-zoom-b").bounding_box()
    cx, cy = canvas_b["x"] + canvas_b["width"] / 2, canvas_b["y"] + canvas_b["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 100, cy - 50, steps=5)
    page.mouse.up()
    panned_a, panned_b = synced()
    assert panned_b[0] == pytest.approx(after_b[0] + 100 / after_b[2], rel=1e-3)
    assert panned_a[0] == pytest.approx(after_a[0] + 100 / after_b[2] / 0.5, rel=1e-3)
    _shot(page, "review-zoom")
    assert page.locator('[data-testid="stException"]').count() == 0

    gaps = sorted(gaps)
    print(f"\nsynced zoom on a {size[0]:,} x {size[1]:,} scan: test image made in {made:.1f} s; zoom on "
          f"(tile pyramids cut once) {first:.1f} s; while zooming: median frame gap "
          f"{gaps[len(gaps) // 2]:.1f} ms, slowest {gaps[-1]:.1f} ms, median draw of both canvases "
          f"{draws[len(draws) // 2]:.2f} ms ({len(draws)} frames)")
    page.close()
    shutil.rmtree(project.parent, ignore_errors=True)
