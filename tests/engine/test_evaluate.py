import json

import pytest

from engine.evaluate import (
    AnnotationError,
    Instance,
    Query,
    average_precision,
    evaluate,
    load_annotations,
)
from engine.types import Box, Detection

T1, T2 = Instance("b.jpg", Box(0, 0, 10, 10)), Instance("c.jpg", Box(0, 0, 10, 10))


def det(image, x=0, score=1.0):
    return Detection(image, Box(x, 0, x + 10, 10), score)


def test_ap_perfect_ranking_is_one():
    assert average_precision([det("b.jpg"), det("c.jpg")], [T1, T2]) == (1.0, True)


def test_ap_known_answer_with_a_miss_first():
    # hits at ranks 2 and 4: (1/2 + 2/4) / 2 targets
    ap, top1 = average_precision([det("x.jpg"), det("b.jpg"), det("y.jpg"), det("c.jpg")], [T1, T2])
    assert ap == pytest.approx(0.5) and not top1


def test_a_target_is_matched_only_once_and_iou_must_exceed_threshold():
    ap, _ = average_precision([det("b.jpg"), det("b.jpg"), det("c.jpg", x=8)], [T1, T2])
    assert ap == pytest.approx(0.5)  # duplicate is a false positive; IoU(8-shift) = 2/18 < 0.3


def test_evaluate_averages_per_class_then_over_classes():
    qs = [Query("dog", Instance("a.jpg", Box(0, 0, 5, 5)), (T1,)), Query("dog", Instance("a.jpg", Box(0, 0, 5, 5)), (T2,)),
          Query("cat", Instance("a.jpg", Box(0, 0, 5, 5)), (T1,))]
    res = evaluate(qs, lambda q: [det("b.jpg")])
    assert res.per_class == {"cat": 1.0, "dog": 0.5}
    assert res.mean_ap == pytest.approx(0.75)
    assert res.top1 == pytest.approx(2 / 3)


def test_reads_artminer_json(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"11": [{"query": ["a.jpg", [1, 2, 30, 40]], "gt": [["b.jpg", [5, 5, 20, 20]]]}]}))
    (q,) = load_annotations(path)
    assert q.motif == "11" and q.query == Instance("a.jpg", Box(1, 2, 30, 40)) and q.targets == (Instance("b.jpg", Box(5, 5, 20, 20)),)


def test_reads_via_and_groups_by_attribute(tmp_path):
    def region(x, motif):
        return {"shape_attributes": {"name": "rect", "x": x, "y": 0, "width": 10, "height": 10}, "region_attributes": {"motif": motif}}

    via = {"a.jpg123": {"filename": "a.jpg", "size": 123, "regions": [region(0, "dog"), region(20, "cat")], "file_attributes": {}},
           "b.jpg9": {"filename": "b.jpg", "size": 9, "regions": [region(5, "dog")], "file_attributes": {}}}
    path = tmp_path / "via.json"
    path.write_text(json.dumps({"_via_img_metadata": via}))
    queries = load_annotations(path)
    assert sorted(q.query.image for q in queries) == ["a.jpg", "b.jpg"]  # the lone cat makes no query
    assert all(q.motif == "dog" for q in queries)


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read"),
    ("[]", "JSON object"),
    ('{"x": [{"query": ["a.jpg"]}]}', "entry 0"),
    ('{"x": [{"query": ["a.jpg", [1, 2, 3]], "gt": []}]}', "bad box"),
    ('{"x": [{"query": ["a.jpg", [5, 5, 1, 1]], "gt": []}]}', "bad box"),
])
def test_malformed_annotations_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message):
        load_annotations(path)
