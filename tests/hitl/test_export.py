"""Export formats (CSV, JSON, W3C Web Annotation, IIIF, training) and the JSON round trip."""

from __future__ import annotations

import csv
import json
import re
import urllib.parse
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

import hitl.export as export_module
from db import ImageRecord, Store
from engine.types import Box, ModelRef, PairMatch
from hitl.export import CSV_HEADER, export_links, import_links

MOTIVATIONS = {"assessing", "bookmarking", "classifying", "commenting", "describing", "editing",
               "highlighting", "identifying", "linking", "moderating", "questioning", "replying",
               "tagging"}
XYWH = re.compile(r"^xywh=(\d+),(\d+),(\d+),(\d+)$")


def _img(key: str, **kw) -> ImageRecord:
    defaults = dict(path=f"/collection/{key}.jpg", width=200, height=100, title=f"Work {key}")
    return ImageRecord(image_id=key * 16, sha256=key * 64, **{**defaults, **kw})


IMAGES = {
    "a": _img("a"),
    "b": _img("b"),
    "c": _img("c", path="/cache/c.jpg", width=128, height=96, source="iiif",
              iiif_canvas="https://x.org/canvas/1", iiif_manifest="https://x.org/m3.json",
              canvas_width=1280, canvas_height=960, extra={"iiif_version": 3}),
    "d": _img("d", path="/cache/d.jpg", source="iiif", iiif_canvas="https://y.org/c/7",
              iiif_manifest="https://y.org/m2.json", canvas_width=400, canvas_height=200,
              extra={"iiif_version": 2}),
}


@pytest.fixture
def project() -> tuple[Store, dict[str, int]]:
    """Links in every state: confirmed, rejected, unsure, unreviewed, undone, on IIIF images."""
    store = Store(":memory:")
    store.add_images(IMAGES.values())
    store.add_model(ModelRef("m", "effnet-lite0"))
    store.add_model(ModelRef("m@1", "effnet-lite0", "/ck/1.pt", parent="m"))
    run = store.start_run("m@1", {})
    aff = ((1.0, 0.0, 3.0), (0.0, 1.0, -2.0))

    def match(a: str, b: str, score: float) -> PairMatch:
        # The confirmed link (a, b) is a mirrored copy with its inlier points: exports must say so.
        points = ((12.5, 11.5, 20.5, 9.5), (18.5, 17.5, 15.5, 15.5)) if (a, b) == ("a", "b") else ()
        return PairMatch(a * 16, b * 16, Box(10, 10, 20.5, 20), Box(13, 8, 23.5, 18), aff, score, 11,
                         mirrored=(a, b) == ("a", "b"), inliers=points)

    names = ["confirmed", "rejected", "unsure", "unreviewed", "undone", "iiif3", "iiif2"]
    pairs = [("a", "b"), ("a", "c"), ("b", "c"), ("a", "d"), ("b", "d"), ("c", "a"), ("d", "b")]
    ids = dict(zip(names, store.add_links(run, [match(a, b, 0.9 - i / 20)
                                                for i, (a, b) in enumerate(pairs)])))
    store.add_verdict(ids["confirmed"], "reject", "ben")
    store.add_verdict(ids["confirmed"], "confirm", "ana", note="same dog, mirrored")
    store.add_verdict(ids["rejected"], "reject", "ana")
    store.add_verdict(ids["unsure"], "unsure", "ben", note="hard to say")
    undone = store.add_verdict(ids["undone"], "confirm", "ana")
    store.undo_verdict(undone, "ana", note="misclick")
    store.add_verdict(ids["iiif3"], "confirm", "ana")
    store.add_verdict(ids["iiif2"], "confirm", "ben")
    return store, ids


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def test_csv_has_documented_header_and_confirmed_links(project, tmp_path: Path) -> None:
    store, ids = project
    assert export_links(store, "csv", tmp_path / "links.csv") == 3
    header, rows = _csv_rows(tmp_path / "links.csv")
    assert tuple(header) == CSV_HEADER
    documented = re.sub(r"\s+", "", export_module.__doc__.split("header::")[1].split("(one")[0])
    assert documented == ",".join(CSV_HEADER)  # the docstring (and README) say the truth
    first = rows[0]
    assert int(first["link_id"]) == ids["confirmed"]
    assert (first["image_a"], first["path_b"], first["title_a"]) == ("a" * 16, "/collection/b.jpg",
                                                                     "Work a")
    assert [first[k] for k in ("box_a_x0", "box_a_y0", "box_a_x1", "box_a_y1")] == [
        "10", "10", "20.5", "20"]
    assert (first["status"], first["annotator"], first["note"]) == ("confirm", "ana",
                                                                    "same dog, mirrored")
    assert first["verdict_at"].endswith("Z") and first["n_inliers"] == "11"
    assert {r["status"] for r in rows} == {"confirm"}


def test_all_verdicts_adds_rejected_and_unsure_but_not_unreviewed(project, tmp_path: Path) -> None:
    store, ids = project
    assert export_links(store, "csv", tmp_path / "all.csv", all_verdicts=True) == 5
    _, rows = _csv_rows(tmp_path / "all.csv")
    assert {int(r["link_id"]): r["status"] for r in rows} == {
        ids["confirmed"]: "confirm", ids["rejected"]: "reject", ids["unsure"]: "unsure",
        ids["iiif3"]: "confirm", ids["iiif2"]: "confirm"}


def _is_iri(value: object) -> bool:
    return isinstance(value, str) and bool(urllib.parse.urlparse(value).scheme)


def _check_specific_resource(res: dict) -> None:
    assert res["type"] == "SpecificResource" and _is_iri(res["source"])
    selector = res["selector"]
    assert selector["type"] == "FragmentSelector"
    assert selector["conformsTo"] == "http://www.w3.org/TR/media-frags/"
    match = XYWH.match(selector["value"])
    assert match and int(match.group(3)) > 0 and int(match.group(4)) > 0, selector["value"]


def validate_web_annotation_page(doc: dict) -> None:
    """Structural check against the Web Annotation Data Model (W3C REC 2017) shape."""
    assert doc["@context"] == "http://www.w3.org/ns/anno.jsonld"
    assert doc["type"] == "AnnotationPage" and _is_iri(doc["id"])
    assert isinstance(doc["items"], list)
    for ann in doc["items"]:
        assert "@context" not in ann or ann["@context"] == doc["@context"]
        assert _is_iri(ann["id"]) and ann["type"] == "Annotation"
        assert ann["motivation"] in MOTIVATIONS
        targets = ann["target"] if isinstance(ann["target"], list) else [ann["target"]]
        assert len(targets) == 2
        for target in targets:
            _check_specific_resource(target)
        for body in ann.get("body", []):
            assert body["type"] == "TextualBody" and isinstance(body["value"], str)
            assert body.get("purpose", "commenting") in MOTIVATIONS
        creator = ann["creator"]
        assert creator["type"] in ("Person", "Organization", "Software") and creator["name"]
        assert ann["created"].endswith("Z")
        datetime.fromisoformat(ann["created"].replace("Z", "+00:00"))


def test_w3c_annotations_validate(project, tmp_path: Path) -> None:
    store, ids = project
    n = export_links(store, "w3c", tmp_path / "links.jsonld", all_verdicts=True)
    doc = json.loads((tmp_path / "links.jsonld").read_text())
    validate_web_annotation_page(doc)
    assert n == len(doc["items"]) == 5
    by_status = {}
    for ann in doc["items"]:
        by_status.setdefault(ann["body"][0]["value"], []).append(ann)
    assert {k: len(v) for k, v in by_status.items()} == {"confirm": 3, "reject": 1, "unsure": 1}
    first = doc["items"][0]
    assert first["target"][0]["source"] == "file:///collection/a.jpg"
    assert first["target"][0]["selector"]["value"] == "xywh=10,10,10,10"  # 10.5 rounds to even
    assert first["creator"]["name"] == "ana"
    assert {"type": "TextualBody", "purpose": "commenting",
            "value": "same dog, mirrored"} in first["body"]
    assert first["body"][1]["value"].endswith(", mirrored copy")
    assert not any(b["value"].endswith("mirrored copy") for a in doc["items"][1:] for b in a["body"])
    iiif = [a for a in doc["items"] if a["target"][0]["source"] == "https://x.org/canvas/1"][0]
    assert iiif["target"][0]["selector"]["value"] == "xywh=100,100,105,100"  # canvas = 10x image
    # ids are stable: a second export names the same annotations
    export_links(store, "w3c", tmp_path / "again.jsonld", all_verdicts=True)
    again = json.loads((tmp_path / "again.jsonld").read_text())
    assert [a["id"] for a in again["items"]] == [a["id"] for a in doc["items"]]


def test_invalid_annotation_fails_the_validator() -> None:
    bad = {"@context": "http://www.w3.org/ns/anno.jsonld", "id": "urn:x", "type": "AnnotationPage",
           "items": [{"id": "urn:y", "type": "Annotation", "motivation": "linking",
                      "creator": {"type": "Person", "name": "a"}, "created": "2024-01-01T00:00:00Z",
                      "target": [{"type": "SpecificResource", "source": "file:///a.jpg",
                                  "selector": {"type": "FragmentSelector",
                                               "conformsTo": "http://www.w3.org/TR/media-frags/",
                                               "value": "xywh=1.5,2,3,4"}}] * 2}]}
    with pytest.raises(AssertionError):
        validate_web_annotation_page(bad)


def test_iiif_export_writes_one_page_per_manifest(project, tmp_path: Path) -> None:
    store, _ = project
    n = export_links(store, "iiif", tmp_path / "iiif.json")
    index = json.loads((tmp_path / "iiif.json").read_text())["artminer_iiif_export"]
    assert {e["manifest"]: e["iiif_version"] for e in index} == {
        "https://x.org/m3.json": 3, "https://y.org/m2.json": 2}
    pages = {e["manifest"]: json.loads((tmp_path / e["file"]).read_text()) for e in index}
    v3, v2 = pages["https://x.org/m3.json"], pages["https://y.org/m2.json"]
    assert v3["type"] == "AnnotationPage" and v3["@context"].endswith("presentation/3/context.json")
    (ann,) = v3["items"]
    assert ann["motivation"] == "linking" and ann["target"] == "https://x.org/canvas/1#xywh=100,100,105,100"
    _check_specific_resource(ann["body"])
    assert v2["@type"] == "sc:AnnotationList" and v2["within"] == "https://y.org/m2.json"
    (res,) = v2["resources"]
    assert res["motivation"] == "oa:linking" and res["on"] == "https://y.org/c/7#xywh=20,20,21,20"
    assert res["resource"]["@id"] == "file:///collection/b.jpg#xywh=13,8,10,10"
    assert n == 2


def test_training_export_labels_confirmed_and_rejected(project, tmp_path: Path) -> None:
    store, ids = project
    assert export_links(store, "training", tmp_path / "train.json") == 4
    items = json.loads((tmp_path / "train.json").read_text())
    assert {i["link_id"]: i["label"] for i in items} == {
        ids["confirmed"]: 1, ids["rejected"]: 0, ids["iiif3"]: 1, ids["iiif2"]: 1}
    first = items[0]
    assert set(first) == {"link_id", "image_a", "image_b", "path_a", "path_b", "box_a", "box_b",
                          "affine", "mirrored", "label"}
    assert first["box_a"] == [10, 10, 20.5, 20] and first["affine"] == [[1, 0, 3], [0, 1, -2]]


def test_json_round_trip_keeps_links_and_verdicts(project, tmp_path: Path) -> None:
    store, _ = project
    export_links(store, "json", tmp_path / "links.json", all_verdicts=True)
    fresh = Store(tmp_path / "fresh.duckdb")
    result = import_links(fresh, tmp_path / "links.json")
    assert (result.links_added, result.links_existing) == (5, 0)

    def snapshot(s: Store) -> dict:
        found = {}
        for link in s.list_links(status=["confirm", "reject", "unsure"], inliers=True):
            history = s.link_history(link.link_id)
            ids = {v.verdict_id: n for n, v in enumerate(history)}
            found[(link.image_a, link.image_b, link.score)] = (
                link.match, link.model_id, link.status,
                [(v.verdict, v.annotator, v.created, v.note, v.geometry,
                  ids.get(v.revokes)) for v in history])
        return found

    assert snapshot(fresh) == snapshot(store)
    assert [lk.match.mirrored for lk in fresh.list_links(status="confirm")].count(True) == 1
    assert [len(lk.match.inliers) for lk in fresh.list_links(inliers=True)].count(2) == 1
    assert [replace(im, added=None) for im in fresh.list_images()] == [
        replace(im, added=None) for im in store.list_images()]
    assert fresh.get_model("m@1").ref.parent == "m"
    again = import_links(fresh, tmp_path / "links.json")
    assert (again.links_added, again.links_existing, again.verdicts_added) == (0, 5, 0)


def test_round_trip_of_undone_verdicts(tmp_path: Path, project) -> None:
    store, ids = project
    store.add_verdict(ids["undone"], "reject", "ben")  # now in force after an undo
    export_links(store, "json", tmp_path / "l.json", all_verdicts=True)
    fresh = Store(":memory:")
    import_links(fresh, tmp_path / "l.json")
    (link,) = [lk for lk in fresh.list_links() if lk.image_b == "d" * 16 and lk.status == "reject"]
    assert [v.verdict for v in fresh.link_history(link.link_id)] == ["confirm", "revoke", "reject"]


def test_bad_format_and_bad_import_are_clear_errors(project, tmp_path: Path) -> None:
    store, _ = project
    with pytest.raises(ValueError, match="unknown export format 'xml'"):
        export_links(store, "xml", tmp_path / "x")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an ArtMiner links export"):
        import_links(store, tmp_path / "other.json")
    with pytest.raises(ValueError, match="cannot read links export"):
        import_links(store, tmp_path / "absent.json")
    export_links(store, "json", tmp_path / "links.json")
    doc = json.loads((tmp_path / "links.json").read_text())
    doc["links"][0]["inliers"] = [[1, 2, 3]]  # a point needs x_a, y_a, x_b, y_b
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="inliers must be a list"):
        import_links(Store(":memory:"), tmp_path / "bad.json")


def test_w3c_and_iiif_carry_the_shared_detail_polygon(project, tmp_path: Path) -> None:
    from db.records import LinkMaskRecord

    store, ids = project
    triangle_a = ((12.0, 12.0), (18.0, 12.0), (18.0, 18.0))
    triangle_b = ((15.0, 10.0), (21.0, 10.0), (21.0, 16.0))
    store.save_link_masks([LinkMaskRecord(ids["confirmed"], triangle_a, triangle_b, True),
                           LinkMaskRecord(ids["iiif3"], triangle_a, triangle_b, False)])
    export_links(store, "w3c", tmp_path / "links.jsonld")
    doc = json.loads((tmp_path / "links.jsonld").read_text())
    validate_web_annotation_page(doc)  # the box stays the selector; the polygon refines it
    first = next(a for a in doc["items"] if a["target"][0]["source"] == "file:///collection/a.jpg")
    refined = first["target"][0]["selector"]["refinedBy"]
    assert refined["type"] == "SvgSelector" and "points='2.0,2.0 8.0,2.0 8.0,8.0'" in refined["value"]
    assert "points='2.0,2.0 8.0,2.0 8.0,8.0'" in first["target"][1]["selector"]["refinedBy"]["value"]
    unmasked = [a for a in doc["items"] if "refinedBy" not in a["target"][0]["selector"]]
    assert len(unmasked) == len(doc["items"]) - 2
    export_links(store, "iiif", tmp_path / "iiif.json")
    index = json.loads((tmp_path / "iiif.json").read_text())["artminer_iiif_export"]
    v3 = json.loads((tmp_path / next(e["file"] for e in index if e["iiif_version"] == 3)).read_text())
    assert v3["items"][0]["body"]["selector"]["refinedBy"]["type"] == "SvgSelector"
