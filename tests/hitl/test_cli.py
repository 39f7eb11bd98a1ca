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
    assert len(hits) == 3 and set(hits[0]) == {"image", "box", "score", "mirrored"}
    assert hits[0]["image"].endswith("img4.jpg") and not hits[0]["mirrored"]
    assert hits == sorted(hits, key=lambda h: -h["score"])


def test_detect_finds_a_mirrored_copy_and_says_so(image_folder, capsys):
    from PIL import Image

    Image.open(image_folder / "img4.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        image_folder / "img6.jpg", quality=95)
    args = ["detect", str(image_folder / "img1.jpg"), "--box", "30,20,94,68", "--collection",
            str(image_folder), "--top-k", "3", "--json", "--quiet"]
    assert main(args) == 0
    hits = json.loads(capsys.readouterr().out)
    flipped = next(h for h in hits if h["image"].endswith("img6.jpg"))
    assert flipped["mirrored"]  # img4's motif (x 80-144) mirrored in a 160 px wide image
    assert abs(flipped["box"][0] - 16) <= 16 and abs(flipped["box"][2] - 80) <= 16
    assert main([*args, "--no-mirror"]) == 0
    assert not any(h["mirrored"] for h in json.loads(capsys.readouterr().out))


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


def test_app_forwards_sigterm_to_its_server(tmp_path):
    """`artminer app` killed by SIGTERM must not leave its Streamlit child serving the port."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent_code = ("import sys; from hitl.cli import run_forwarding_signals; "
                   f"sys.exit(run_forwarding_signals([sys.executable, '-c', {child!r}]))")
    parent = subprocess.Popen([sys.executable, "-c", parent_code],
                              env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    end = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < end and parent.poll() is None
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM  # ended by the forwarded signal
    try:
        os.kill(child_pid, 0)
        alive = Path(f"/proc/{child_pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive


def _exit_code(argv: list[str]) -> int:
    """main's exit code, argparse's own usage errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_discover_refuses_an_unknown_mirror_mode(tmp_path, capsys):
    code = _exit_code(["discover", "--project", str(tmp_path / "p.duckdb"), "--mirror", "both"])
    assert code == 2 and "--mirror" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--expand", "-1"], ["--expand", "x"], ["--expand-k", "0"]])
def test_discover_bad_two_hop_flags_are_exit_2_naming_the_flag(tmp_path, capsys, args):
    code = _exit_code(["discover", "--project", str(tmp_path / "p.duckdb"), *args])
    assert code == 2 and args[0] in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--steps", "0"], ["--minutes", "0"]])
def test_train_bad_schedule_is_exit_2_naming_the_flag(tmp_path, capsys, args):
    code = _exit_code(["train", "--project", str(tmp_path / "none.duckdb"), *args])  # counts must be positive
    assert code == 2
    assert args[0] in capsys.readouterr().err


def test_train_unknown_freeze_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["train", "--project", str(tmp_path / "none.duckdb"), "--freeze", "stem"])
    assert err.value.code == 2


@pytest.mark.parametrize("args", [["--address", "auto"], ["--workers", "2"], ["--executor", "dask"]])
def test_discover_executor_flags_are_checked(tmp_path, capsys, args):
    code = _exit_code(["discover", "--project", str(tmp_path / "p.duckdb"), *args])
    assert code == 2 and "--executor" in capsys.readouterr().err.strip().splitlines()[-1]
