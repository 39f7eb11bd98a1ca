"""Hostile servers and hostile manifests: every download ends within its deadline and cap,
every failure is a note on its source, and the sources after it are still ingested.

The server is a loopback `benchmarks.hostile_server` (drip, huge, truncated, redirecting,
deeply nested JSON). ``benchmarks/hostile_ingest.py`` prints wall time and peak RSS per case.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.hostile_server import hostile_server
from db import Store
from hitl.formats.fetch import FetchError, FetchLimits, fetch_bytes, resolve_named
from hitl.ingest import ingest_paths

LIMITS = FetchLimits(timeout_s=2.0, deadline_s=1.5, max_bytes=1 << 20, max_json_bytes=1 << 20)


def _jpeg(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


def _manifest_v3(image_ids: list[str], manifest_id: str = "https://m.example/m.json") -> dict:
    canvases = [{"id": f"{manifest_id}/c{i}", "type": "Canvas", "width": 32, "height": 24,
                 "items": [{"type": "AnnotationPage", "items": [{
                     "type": "Annotation", "motivation": "painting",
                     "body": {"id": url, "type": "Image"}}]}]}
                for i, url in enumerate(image_ids)]
    return {"@context": "http://iiif.io/api/presentation/3/context.json", "id": manifest_id,
            "type": "Manifest", "label": {"en": ["m"]}, "items": canvases}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "artminer.duckdb")


@pytest.fixture
def server():
    with hostile_server(drip_s=0.3) as httpd:
        yield httpd


# ---------------------------------------------------------------------- hole 2: hostile servers


def test_drip_ends_at_the_deadline(server) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError, match="deadline"):
        fetch_bytes(f"{server.base}/drip/m.json", LIMITS)
    assert time.monotonic() - start < LIMITS.deadline_s + 2 * server.drip_s + 1.0


def test_announced_huge_body_is_refused_before_reading(server) -> None:
    with pytest.raises(FetchError, match="1430.5 MiB announced, over the 1 MiB limit"):
        fetch_bytes(f"{server.base}/huge/a.jpg", LIMITS)


def test_unannounced_huge_body_stops_at_the_cap(server) -> None:
    with pytest.raises(FetchError, match="over the 1 MiB limit"):
        fetch_bytes(f"{server.base}/stream/a.jpg", LIMITS)
    time.sleep(0.3)  # let the server notice the hang-up
    # The client read at most cap + one chunk; kernel buffers hold a few MiB more at most.
    assert server.sent["/stream/a.jpg"] < 16 * LIMITS.max_bytes


def test_truncated_body_is_a_fetch_error(server) -> None:
    with pytest.raises(FetchError, match="truncated"):
        fetch_bytes(f"{server.base}/truncated/m.json", LIMITS)


def test_redirect_to_a_local_file_is_refused(server) -> None:
    with pytest.raises(FetchError, match="file:///etc/passwd.*(not allowed|refused)"):
        fetch_bytes(f"{server.base}/redirect-file/m.json", LIMITS)


def test_every_hostile_source_is_a_note_and_later_sources_still_go_in(
        server, store: Store, tmp_path: Path) -> None:
    good_image = _jpeg(tmp_path / "good" / "g.jpg").read_bytes()
    server.files["g.jpg"] = good_image
    server.files["good.json"] = json.dumps(_manifest_v3([f"{server.base}/files/g.jpg"])).encode()
    hostile = [f"{server.base}/drip/m.json", f"{server.base}/huge/m.json",
               f"{server.base}/truncated/m.json", f"{server.base}/redirect-file/m.json",
               f"{server.base}/deep.json"]
    start = time.monotonic()
    report = ingest_paths(store, [*hostile, f"{server.base}/files/good.json"],
                          cache_dir=tmp_path / "cache", progress=False, limits=LIMITS)
    elapsed = time.monotonic() - start
    reasons = {s.source: s.reason for s in report.skipped}
    assert set(reasons) == set(hostile)
    assert "deadline" in reasons[hostile[0]]
    assert "over the 1 MiB limit" in reasons[hostile[1]]
    assert "truncated" in reasons[hostile[2]]
    assert "file:///etc/passwd' is not allowed" in reasons[hostile[3]]
    assert "nested too deeply" in reasons[hostile[4]]
    assert len(report.added) == 1  # the good manifest after them all
    assert elapsed < 5 * (LIMITS.deadline_s + 1)  # nothing hung (generous: a slow CI machine)


def test_hostile_image_urls_are_per_canvas_notes(server, store: Store, tmp_path: Path) -> None:
    server.files["g.jpg"] = _jpeg(tmp_path / "g.jpg").read_bytes()
    urls = [f"{server.base}/drip/a.jpg", f"{server.base}/huge/b.jpg",
            f"{server.base}/truncated/c.jpg", f"{server.base}/files/g.jpg"]
    server.files["m.json"] = json.dumps(_manifest_v3(urls)).encode()
    report = ingest_paths(store, [f"{server.base}/files/m.json"], cache_dir=tmp_path / "cache",
                          progress=False, limits=LIMITS)
    assert {s.source for s in report.skipped} == set(urls[:3])
    assert len(report.added) == 1


# ---------------------------------------------------------------------- hole 1: origins


def test_remote_manifest_may_not_name_local_files(server, store: Store, tmp_path: Path) -> None:
    private = _jpeg(tmp_path / "private" / "secret.jpg", seed=3)
    private.chmod(0o600)
    named = [private.as_uri(), str(private), "file:///etc/shadow", "/etc/passwd"]
    server.files["m.json"] = json.dumps(_manifest_v3(named)).encode()
    cache = tmp_path / "cache"
    report = ingest_paths(store, [f"{server.base}/files/m.json"], cache_dir=cache,
                          progress=False, limits=LIMITS)
    assert report.added == ()
    assert {s.source for s in report.skipped} == set(named)
    reasons = {s.source: s.reason for s in report.skipped}
    for url in (named[0], named[2]):
        assert "may only name http(s) images" in reasons[url]
    for bare in (named[1], named[3]):  # a relative reference on the manifest's own server
        assert "HTTP 404" in reasons[bare] and server.base in reasons[bare]
    assert not cache.exists() or not any(cache.iterdir())  # nothing was copied


def test_local_manifest_names_files_only_in_its_folder(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "collection"
    inside = _jpeg(folder / "plates" / "p1.jpg", seed=1)
    outside = _jpeg(tmp_path / "elsewhere" / "x.jpg", seed=2)
    (folder / "link.jpg").symlink_to(outside)  # a link out of the folder is outside too
    named = ["plates/p1.jpg", outside.as_uri(), str(outside), "../elsewhere/x.jpg", "link.jpg"]
    manifest = folder / "m.json"
    manifest.write_text(json.dumps(_manifest_v3(named)))
    report = ingest_paths(store, [str(manifest)], cache_dir=tmp_path / "cache", progress=False)
    assert len(report.added) == 1
    assert {s.source for s in report.skipped} == set(named[1:])
    assert all("only name images in its own folder" in s.reason for s in report.skipped)
    assert resolve_named("plates/p1.jpg", str(manifest)) == str(inside.resolve())


def test_cached_copy_keeps_the_source_permissions_at_most(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "collection"
    private = _jpeg(folder / "p.jpg")
    private.chmod(0o600)
    (folder / "m.json").write_text(json.dumps(_manifest_v3(["p.jpg"])))
    cache = tmp_path / "cache"
    report = ingest_paths(store, [str(folder / "m.json")], cache_dir=cache, progress=False)
    assert len(report.added) == 1
    (copy,) = cache.iterdir()
    assert stat.S_IMODE(os.stat(copy).st_mode) & 0o077 == 0


def test_local_reads_refuse_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(FetchError, match="not a regular file"):
        fetch_bytes(str(fifo), LIMITS)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (LIMITS.max_json_bytes + 1))
    with pytest.raises(FetchError, match="over the 1 MiB limit"):
        fetch_bytes(str(big), LIMITS)
