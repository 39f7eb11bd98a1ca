"""Ingest of folders, metadata tables, IIIF manifests (v3, v2.1) and VIA files.

No test touches the network: manifests and images are served by a local http.server
on 127.0.0.1, or read through file:// URLs.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from db import Store
from hitl.ingest import BadImage, ingest_paths, probe_image, read_metadata

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _picture(path: Path, seed: int, size: tuple[int, int] = (64, 48), **save) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "artminer.duckdb")


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    """Five formats in nested folders, plus one byte-identical copy under another name."""
    root = tmp_path / "collection"
    _picture(root / "img0.jpg", 0)
    _picture(root / "img1.jpg", 1)
    _picture(root / "img2.jpg", 2, size=(120, 90))
    _picture(root / "sub" / "deeper" / "plate.PNG", 3)
    _picture(root / "sub" / "scan.tif", 4)
    _picture(root / "sub" / "web.webp", 5)
    _picture(root / "sub" / "old.bmp", 6)
    shutil.copy(root / "img1.jpg", root / "sub" / "img1-copy.jpg")
    (root / "notes.txt").write_text("not an image, and not an image suffix either")
    return root


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local static server (127.0.0.1, free port) standing in for IIIF image servers."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def _serve_iiif_images(root: Path) -> None:
    _picture(root / "iiif3/dog-left/full/max/0/default.jpg", 10, size=(128, 96))
    _picture(root / "iiif3/dog-right/full/max/0/default.jpg", 11, size=(64, 48))
    _picture(root / "iiif3/good/full/max/0/default.jpg", 12, size=(32, 24))
    _picture(root / "iiif2/mill-1/full/full/0/default.jpg", 13, size=(80, 60))
    _picture(root / "static/mill-2.jpg", 14, size=(80, 60))
    (root / "static/notes.txt").write_text("hello")


def _manifest(name: str, base: str, out: Path) -> Path:
    out.write_text((FIXTURES / name).read_text().replace("{BASE}", base))
    return out


# ---------------------------------------------------------------------- folders


def test_folder_is_ingested_recursively_and_duplicates_reported(store: Store,
                                                                 collection: Path) -> None:
    report = ingest_paths(store, [collection], progress=False)
    assert len(report.added) == 7 and store.count_images() == 7
    ((dup_path, dup_id),) = report.duplicates
    assert dup_path.endswith("img1-copy.jpg") and dup_id == probe_image(collection / "img1.jpg").image_id
    assert report.skipped == ()  # notes.txt has no image suffix: not looked at
    formats = {Path(im.path).suffix.lower() for im in store.list_images()}
    assert formats == {".jpg", ".png", ".tif", ".webp", ".bmp"}
    big = [im for im in store.list_images() if im.path.endswith("img2.jpg")][0]
    assert (big.width, big.height, big.source) == (120, 90, "folder")

    again = ingest_paths(store, [collection], progress=False)
    assert again.added == () and len(again.duplicates) == 8 and store.count_images() == 7


def test_bad_files_are_reported_and_the_rest_goes_in(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    good = _picture(folder / "good.jpg", 1)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("this is not a PNG")
    data = _picture(tmp_path / "whole.jpg", 2, size=(200, 150)).read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    png = _picture(tmp_path / "whole.png", 3).read_bytes()
    (folder / "cut.png").write_bytes(png[: len(png) - 40])
    tif = _picture(tmp_path / "whole.tif", 4).read_bytes()
    (folder / "cut.tif").write_bytes(tif[: len(tif) // 2])
    report = ingest_paths(store, [folder, tmp_path / "nowhere"], progress=False)
    reasons = {Path(s.source).name: s.reason for s in report.skipped}
    assert reasons == {
        "empty.jpg": "empty file (0 bytes)",
        "text.png": "not an image (PIL cannot identify the format)",
        "cut.jpg": "truncated JPEG (no end-of-image marker)",
        "cut.png": "truncated PNG (no IEND chunk)",
        "cut.tif": "truncated TIFF (image data runs past the end of the file)",
        "nowhere": "no such file or folder",
    }
    assert report.added == (probe_image(good).image_id,)


def test_exif_orientation_swaps_size_without_decoding_pixels(tmp_path: Path,
                                                             monkeypatch) -> None:
    exif = Image.Exif()
    exif[274] = 6  # rotate 90: stored 64x48, shown 48x64
    path = _picture(tmp_path / "rotated.jpg", 1, size=(64, 48), exif=exif.tobytes())

    def no_decode(self):
        raise AssertionError("ingest decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    record = probe_image(path)
    assert (record.width, record.height) == (48, 64)
    assert record.image_id == record.sha256[:16] and len(record.sha256) == 64
    with pytest.raises(BadImage, match="empty"):
        probe_image(_empty(tmp_path / "e.png"))


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------------- metadata


def test_metadata_csv_maps_synonyms_and_keeps_unknown_columns(store: Store, collection: Path,
                                                              tmp_path: Path) -> None:
    table = tmp_path / "meta.csv"
    table.write_text(
        "File Name,Name,Author,Year,Technique,Inventory no.\n"
        "img0.jpg,Dog,Jan Brueghel,c. 1605-1610,oil on panel,GG-1\n"
        "IMG2,Mill,Pieter Bruegel,1620s,,GG-2\n"
        "missing.jpg,Ghost,,,,\n", encoding="utf-8")
    report = ingest_paths(store, [collection], metadata_csv=table, progress=False)
    by_name = {Path(im.path).name: im for im in store.list_images()}
    dog, mill = by_name["img0.jpg"], by_name["img2.jpg"]
    assert (dog.title, dog.artist, dog.date, dog.year, dog.medium) == (
        "Dog", "Jan Brueghel", "c. 1605-1610", 1605, "oil on panel")
    assert dog.extra == {"Inventory no.": "GG-1"}
    assert (mill.title, mill.year, mill.medium) == ("Mill", 1620, None)  # matched by stem
    assert any("1 rows match no image (e.g. missing.jpg)" in n for n in report.notes)


def test_metadata_added_later_updates_existing_images(store: Store, collection: Path,
                                                      tmp_path: Path) -> None:
    ingest_paths(store, [collection], progress=False)
    table = tmp_path / "meta.tsv"
    table.write_text("image\tcreator\tdate\tcollection\nold.bmp\tAnon.\t1550\tPrints\n")
    report = ingest_paths(store, [collection], metadata_csv=table, progress=False)
    assert report.added == () and report.metadata_updated == 1
    old = [im for im in store.list_images() if im.path.endswith("old.bmp")][0]
    assert (old.artist, old.year, old.collection) == ("Anon.", 1550, "Prints")


def test_metadata_without_file_column_is_refused(tmp_path: Path) -> None:
    table = tmp_path / "bad.csv"
    table.write_text("title,artist\nDog,Brueghel\n")
    with pytest.raises(ValueError, match="no file-name column"):
        read_metadata(table)
    with pytest.raises(ValueError, match="cannot read metadata file"):
        read_metadata(tmp_path / "absent.csv")


# ---------------------------------------------------------------------- IIIF


def test_iiif_v3_manifest_from_url(store: Store, server, tmp_path: Path) -> None:
    base, root = server
    _serve_iiif_images(root)
    _manifest("iiif_v3.json", base, root / "v3.json")
    cache = tmp_path / "cache"
    report = ingest_paths(store, [f"{base}/v3.json"], cache_dir=cache, progress=False)
    assert len(report.added) == 2 and report.skipped == ()
    left, right = sorted(store.list_images(source="iiif"), key=lambda im: im.iiif_canvas)
    assert left.iiif_canvas == f"{base}/canvas/v3-1"
    assert left.iiif_manifest == f"{base}/manifests/v3.json"
    assert left.source_url == f"{base}/iiif3/dog-left/full/max/0/default.jpg"
    assert (left.width, left.height, left.canvas_width, left.canvas_height) == (128, 96, 1280, 960)
    assert Path(left.path).parent == cache and Path(left.path).exists()
    assert (left.title, right.title) == ("Dog, left", "A dog seen from the right")
    assert (left.artist, left.year, left.medium) == ("Jan Brueghel the Elder", 1605, "oil on panel")
    assert left.extra["Inventory"] == "GG-558" and left.extra["iiif_version"] == 3

    shutil.rmtree(root / "iiif3")  # the cache answers a re-run; nothing is fetched again
    again = ingest_paths(store, [f"{base}/v3.json"], cache_dir=cache, progress=False)
    assert again.added == () and len(again.duplicates) == 2 and again.skipped == ()


def test_iiif_v2_manifest_from_file(store: Store, server, tmp_path: Path) -> None:
    base, root = server
    _serve_iiif_images(root)
    manifest = _manifest("iiif_v2.json", base, tmp_path / "v2.json")
    report = ingest_paths(store, [manifest], cache_dir=tmp_path / "cache", progress=False)
    assert len(report.added) == 2, report.summary()
    one, two = sorted(store.list_images(), key=lambda im: im.iiif_canvas)
    assert one.source_url == f"{base}/iiif2/mill-1/full/full/0/default.jpg"
    assert two.source_url == f"{base}/static/mill-2.jpg"  # no service: the image itself
    assert (one.title, one.artist, one.date, one.year) == ("f. 1r", "Pieter Bruegel the Elder",
                                                           "1620s", 1620)
    assert one.collection == "Test collection" and one.extra["attribution"] == "Public domain"
    assert one.extra["iiif_version"] == 2


def test_malformed_manifests_ingest_their_valid_part(store: Store, server, tmp_path: Path) -> None:
    base, root = server
    _serve_iiif_images(root)
    v3 = _manifest("iiif_v3_malformed.json", base, tmp_path / "v3bad.json")
    v2 = _manifest("iiif_v2_malformed.json", base, tmp_path / "v2bad.json")
    truncated = tmp_path / "cut.json"
    truncated.write_text(v3.read_text()[:300])
    report = ingest_paths(store, [v3, v2, truncated], cache_dir=tmp_path / "c", progress=False)
    assert len(report.added) == 2  # one good canvas in each
    notes = "\n".join(report.notes)
    assert "canvas 2 (" in notes and "no painting annotation" in notes
    assert "canvas 4 (no id): canvas has no id" in notes
    assert "canvas 2 (" in notes and "no image annotation" in notes
    assert "canvas 3 (no id): canvas has no @id" in notes
    skipped = {s.source: s.reason for s in report.skipped}
    missing = f"{base}/iiif3/missing/full/max/0/default.jpg"
    assert "unreachable: HTTP 404" in skipped[missing] and "canvas" in skipped[missing]
    assert "not an image" in skipped[f"{base}/static/notes.txt"]
    assert "not valid JSON" in skipped[str(truncated)]


def test_unreachable_manifest_url_is_reported(store: Store, tmp_path: Path) -> None:
    url = (tmp_path / "absent.json").as_uri()
    report = ingest_paths(store, [url], cache_dir=tmp_path, progress=False)
    ((source, reason),) = [(s.source, s.reason) for s in report.skipped]
    assert source == url and reason.startswith("unreachable")


# ---------------------------------------------------------------------- VIA


def test_via_regions_attach_to_images_by_file_name(store: Store, collection: Path) -> None:
    report = ingest_paths(store, [collection, FIXTURES / "via2.json"], progress=False)
    assert report.regions_added == 3 and report.notes == ()
    img0 = probe_image(collection / "img0.jpg").image_id
    img1 = probe_image(collection / "img1.jpg").image_id
    found = {(r.region.image_id, r.label): r for r in store.list_regions(source="via")}
    assert found.keys() == {(img0, "dog"), (img0, "windmill"), (img1, "dog")}
    assert found[img0, "dog"].region.box.as_list() == [10, 12, 50, 42]
    assert found[img0, "dog"].attributes == {"name": "dog"}
    assert found[img0, "windmill"].region.box.as_list() == [60, 20, 64, 48]  # clipped to 64x48
    # a URL filename matches by its last component; a checkbox attribute gives the label
    assert found[img1, "dog"].region.box.as_list() == [30, 30, 64, 48]
    again = ingest_paths(store, [FIXTURES / "via2.json"], progress=False)
    assert again.regions_added == 0


def test_malformed_via_file_ingests_its_valid_part(store: Store, collection: Path,
                                                   tmp_path: Path) -> None:
    report = ingest_paths(store, [collection, FIXTURES / "via2_malformed.json"], progress=False)
    assert report.regions_added == 1
    assert [r.label for r in store.list_regions(source="via")] == ["cherub"]
    notes = "\n".join(report.notes)
    for expected in ("region 2: a point has no area", "region 3: unknown or missing shape",
                     "region 4: empty or inverted box", "lies outside the image",
                     "an image entry without a filename",
                     "regions on not-ingested.jpg skipped: image not in the project"):
        assert expected in notes
    broken = tmp_path / "broken_via.json"
    broken.write_text((FIXTURES / "via2.json").read_text()[:200])
    report = ingest_paths(store, [broken], progress=False)
    assert "not valid JSON" in report.skipped[0].reason
