"""End to end in a real browser: Debian chromium driven by Playwright.

Starts ``streamlit run streamlit_app.py`` on a free loopback port with
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
def server(project) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, ARTMINER_PROJECT=str(project))
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "streamlit_app.py"),
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


def _images_loaded(page: Page) -> None:
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


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
    page.locator("[class*='st-key-cluster_confirm_'] button").first.click()
    page.get_by_text(re.compile(r"^Cluster #\d+: confirm$")).wait_for()
    _images_loaded(page)
    _shot(page, "clusters")
    for title in ("Map", "Training", "Propagation"):
        _goto_page(page, title)
        _shot(page, title.lower())
    assert page.locator('[data-testid="stException"]').count() == 0


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
