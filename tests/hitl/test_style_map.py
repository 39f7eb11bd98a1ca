"""The style-group filter of clusters and links."""

from hitl.style_map import in_style_groups


def test_in_style_groups_known_answers():
    style = {"a": 0, "b": 1, "c": -1}
    items = [("a", "x"), ("b",), ("c",), ("x", "y")]
    assert in_style_groups(items, style, []) == [True, True, True, True]
    assert in_style_groups(items, style, [0]) == [True, False, False, False]
    assert in_style_groups(items, style, [1, -1]) == [False, True, True, False]
