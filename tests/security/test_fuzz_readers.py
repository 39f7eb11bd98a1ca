"""Fuzz every ingest reader with malformed input (hypothesis; ~260 generated cases).

For each reader (image files in a folder, metadata CSV, IIIF v2/v3 manifest as a file and
as a loopback URL, VIA, ArtMiner links JSON) a malformed source goes in beside a good
image in the same call. Asserted every time: no traceback escapes (only the reader's
documented `ValueError`, for the metadata table and links import, which refuse whole),
the bad source is reported (skipped, or a note), and the good image is in the project.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks.hostile_server import hostile_server
from db import Store
from hitl.export import import_links
from hitl.ingest import ingest_paths

# derandomize: the same examples every run, so CI is reproducible (run with a seed locally to explore)
FAST = settings(max_examples=45, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Any JSON value, small: the building block of malformed documents.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**20) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _good_image(folder: Path) -> Path:
    path = folder / "good.jpg"
    if not path.exists():
        rng = np.random.default_rng(7)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path)
    return path


def _good_is_in(store: Store, report) -> None:
    assert len(report.added) + len(report.duplicates) >= 1
    assert any(Path(im.path).name == "good.jpg" for im in store.list_images())


def _reported(report, source: str) -> bool:
    return (any(s.source == source or source in s.reason for s in report.skipped)
            or any(source in n for n in report.notes))


def _v3(canvas_field: object, body: object, items: object) -> dict:
    return {"@context": "http://iiif.io/api/presentation/3/context.json", "id": "urn:m",
            "type": "Manifest", "label": canvas_field, "metadata": canvas_field,
            "items": items if items is not None else [
                {"id": "urn:c1", "type": "Canvas", "label": canvas_field,
                 "width": canvas_field, "items": [{"items": [{"motivation": "painting",
                                                              "body": body}]}]}]}


def _v2(resource: object, canvases: object) -> dict:
    return {"@context": "http://iiif.io/api/presentation/2/context.json", "@id": "urn:m2",
            "@type": "sc:Manifest", "sequences": [{"canvases": canvases if canvases is not None
                                                   else [{"@id": "urn:c", "images": [
                                                       {"resource": resource}]}]}]}


MANIFESTS = st.one_of(
    st.builds(_v3, JSON, JSON, st.none() | JSON),
    st.builds(_v2, JSON, st.none() | JSON),
    st.builds(lambda d: {"type": "Manifest", **d} if isinstance(d, dict) else d, JSON),
)


def test_fuzz_image_files(tmp_path: Path) -> None:
    store = Store(":memory:")
    good = _good_image(tmp_path / "good")

    @FAST
    @given(data=st.binary(max_size=300), suffix=st.sampled_from([".jpg", ".png", ".tif",
                                                                  ".webp", ".bmp"]))
    def run(data: bytes, suffix: str) -> None:
        bad = tmp_path / "bad" / f"x{suffix}"
        bad.parent.mkdir(exist_ok=True)
        bad.write_bytes(data)
        report = ingest_paths(store, [str(bad.parent), str(good)], progress=False)
        _good_is_in(store, report)
        if report.added and not report.duplicates:
            return  # random bytes that happen to be a valid image are fine
        assert _reported(report, str(bad)) or len(report.duplicates) >= 1

    run()


def test_fuzz_iiif_manifest_files(tmp_path: Path) -> None:
    store = Store(":memory:")
    good = _good_image(tmp_path / "good")

    @FAST
    @given(doc=MANIFESTS)
    def run(doc: object) -> None:
        bad = tmp_path / "m.json"
        bad.write_text(json.dumps(doc))
        report = ingest_paths(store, [str(bad), str(good)], cache_dir=tmp_path / "cache",
                              progress=False)
        _good_is_in(store, report)
        assert _reported(report, str(bad)) or _reported(report, "urn:")

    run()


def test_fuzz_iiif_manifest_urls(tmp_path: Path) -> None:
    store = Store(":memory:")
    good = _good_image(tmp_path / "good")
    with hostile_server() as server:

        @FAST
        @given(doc=MANIFESTS, raw=st.none() | st.binary(max_size=200))
        def run(doc: object, raw: bytes | None) -> None:
            server.files["m.json"] = raw if raw is not None else json.dumps(doc).encode()
            url = f"{server.base}/files/m.json"
            report = ingest_paths(store, [url, str(good)], cache_dir=tmp_path / "cache",
                                  progress=False)
            _good_is_in(store, report)
            assert _reported(report, url) or _reported(report, "urn:")

        run()


def test_fuzz_via_files(tmp_path: Path) -> None:
    store = Store(":memory:")
    good = _good_image(tmp_path / "good")
    entry = st.fixed_dictionaries({"filename": st.just("good.jpg") | JSON, "regions": JSON})
    region_list = st.lists(st.fixed_dictionaries({"shape_attributes": JSON,
                                                  "region_attributes": JSON}), max_size=3)

    @FAST
    @given(entry=entry, regions=region_list)
    def run(entry: dict, regions: list) -> None:
        doc = {"_via_img_metadata": {"a": entry, "b": {"filename": "good.jpg",
                                                       "regions": regions}}}
        bad = tmp_path / "via.json"
        bad.write_text(json.dumps(doc))
        report = ingest_paths(store, [str(good), str(bad)], progress=False)
        _good_is_in(store, report)

    run()


def test_fuzz_metadata_csv(tmp_path: Path) -> None:
    store = Store(":memory:")
    good = _good_image(tmp_path / "good")

    @FAST
    @given(text=st.text(max_size=200), header=st.sampled_from(["file,title\n", "", "x;y\n"]))
    def run(text: str, header: str) -> None:
        table = tmp_path / "meta.csv"
        table.write_text(header + text, encoding="utf-8", errors="surrogatepass")
        try:
            report = ingest_paths(store, [str(good)], metadata_csv=table, progress=False)
        except ValueError as err:  # documented: a table without a file column refuses whole
            assert str(table) in str(err)
            return
        _good_is_in(store, report)

    run()


def test_fuzz_artminer_links_json(tmp_path: Path) -> None:
    store = Store(":memory:")

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(body=st.dictionaries(st.sampled_from(["images", "models", "links", "version"]), JSON,
                                max_size=4))
    def run(body: dict) -> None:
        path = tmp_path / "links.json"
        path.write_text(json.dumps({"format": "artminer-links", **body}))
        try:
            import_links(store, path)
        except ValueError as err:
            assert str(path) in str(err)

    run()
