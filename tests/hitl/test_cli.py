import json

import pytest

from hitl.cli import main


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTMINER_CACHE", str(tmp_path / "cache"))


def test_detect_prints_json_hits(image_folder, capsys):
    code = main(["detect", str(image_folder / "img1.jpg"), "--box", "30,20,94,68", "--collection",
                 str(image_folder), "--top-k", "3", "--json", "--quiet"])
    assert code == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and set(hits[0]) == {"image", "box", "score"}
    assert hits[0]["image"].endswith("img4.jpg")
    assert hits == sorted(hits, key=lambda h: -h["score"])


@pytest.mark.parametrize("args, message", [
    (["--box", "0,0,500,500"], "outside"),
    (["--box", "1,2,3"], "4 numbers"),
    (["--box", "10,10,5,5"], "box"),
    (["--box", "0,0,10,10", "--model", "vgg99"], "unknown model"),
])
def test_detect_bad_input_is_one_line_exit_2(image_folder, capsys, args, message):
    code = main(["detect", str(image_folder / "img1.jpg"), "--collection", str(image_folder), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err and "Traceback" not in err


def test_missing_query_image(image_folder, capsys):
    assert main(["detect", "nope.jpg", "--box", "0,0,5,5", "--collection", str(image_folder)]) == 2
    assert "not found" in capsys.readouterr().err


def test_eval_with_a_malformed_annotation_file(image_folder, tmp_path, capsys):
    bad = tmp_path / "gt.json"
    bad.write_text("{oops")
    assert main(["eval", "--annotations", str(bad), "--images", str(image_folder)]) == 2
    assert "gt.json" in capsys.readouterr().err


def test_discover_on_missing_project(tmp_path, capsys):
    assert main(["discover", "--project", str(tmp_path / "none.duckdb")]) == 2
    assert "project file not found" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--steps", "0"], ["--minutes", "0"]])
def test_train_bad_schedule_is_one_line_exit_2(tmp_path, capsys, args):
    assert main(["train", "--project", str(tmp_path / "none.duckdb"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "--steps" in err and "\n" not in err


def test_train_unknown_freeze_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["train", "--project", str(tmp_path / "none.duckdb"), "--freeze", "stem"])
    assert err.value.code == 2
