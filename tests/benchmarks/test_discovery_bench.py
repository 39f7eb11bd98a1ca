"""The scale mode of benchmarks/discovery.py: its helpers on tiny inputs (the whole run
on thousands of images is the benchmark itself, too slow for the suite)."""

from __future__ import annotations

import itertools
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hitl.discover
from benchmarks.discovery import (
    DISCOVER_STAGES,
    PeakRss,
    _pairs_sharing,
    build_parser,
    cache_footprint,
    current_rss_bytes,
    iter_synthetic,
    peak_rss_bytes,
    synthetic_collection,
    timed_stages,
    write_synthetic_folder,
)


def test_every_timed_stage_is_a_step_of_discover():
    for name, _ in DISCOVER_STAGES:
        assert callable(getattr(hitl.discover, name)), name


def test_timed_stages_times_and_restores():
    def slow(x):
        return x * 2

    module = types.SimpleNamespace(slow=slow, __name__="fake")
    with timed_stages(module, [("slow", "double")], torch.device("cpu")) as figures:
        assert module.slow(21) == 42
        assert module.slow is not slow
    assert module.slow is slow
    assert figures["double"].seconds > 0
    assert figures["double"].peak_rss is None or figures["double"].peak_rss > 0


def test_timed_stages_names_a_missing_step():
    module = types.SimpleNamespace(__name__="fake")
    with pytest.raises(RuntimeError, match="fake has no gone"):
        with timed_stages(module, [("gone", "x")], torch.device("cpu")):
            pass


def test_pairs_sharing_matches_brute_force():
    rng = np.random.default_rng(3)
    motifs = {f"i{n}": frozenset(rng.choice(6, size=rng.integers(1, 3), replace=False).tolist()) for n in range(40)}
    brute = sum(bool(a & b) for a, b in itertools.combinations(motifs.values(), 2))
    assert _pairs_sharing(motifs) == brute
    assert _pairs_sharing({"a": frozenset({1}), "b": frozenset({1}), "c": frozenset({2})}) == 1


def test_streamed_images_equal_the_collection():
    listed = synthetic_collection(3, seed=5)
    streamed = list(iter_synthetic(3, seed=5))
    assert [im.motifs for im in listed] == [im.motifs for im in streamed]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(listed, streamed))


def test_synthetic_folder_is_written_then_reused(tmp_path: Path):
    folder = tmp_path / "syn"
    motifs = write_synthetic_folder(folder, 3, seed=1)
    files = sorted(folder.glob("*.jpg"))
    assert [f.stem for f in files] == sorted(motifs) == ["syn00000", "syn00001", "syn00002"]
    assert Image.open(files[0]).size == (640, 480)
    assert all(1 <= len(m) <= 2 for m in motifs.values())
    files[0].unlink()  # a reused folder is not rewritten
    assert write_synthetic_folder(folder, 3, seed=1) == motifs
    assert not files[0].exists()


def test_cache_footprint_counts_npz_only(tmp_path: Path):
    (tmp_path / "m" / "ab").mkdir(parents=True)
    (tmp_path / "m" / "ab" / "x.npz").write_bytes(b"1" * 100)
    (tmp_path / "m" / "y.npz").write_bytes(b"1" * 50)
    (tmp_path / "m" / "note.txt").write_bytes(b"1" * 999)
    assert cache_footprint(tmp_path) == (2, 150)


def test_peak_rss_is_in_bytes_and_above_current():
    if peak_rss_bytes() is None or current_rss_bytes() is None:
        pytest.skip("no getrusage or /proc on this platform")
    block = np.ones((64 << 20) // 8)  # 64 MB, touched
    now = current_rss_bytes()
    assert now >= block.nbytes
    # The kernel updates the high-water mark lazily (per-thread counters): allow 5%.
    assert peak_rss_bytes() >= 0.95 * now  # KiB mistaken for bytes would be 1024x too small


def test_parser_keeps_the_pair_timing_default():
    args = build_parser().parse_args([])
    assert args.synthetic_images is None and args.pairs == 200
    args = build_parser().parse_args(["--synthetic-images", "10000", "--k", "20"])
    assert (args.synthetic_images, args.k) == (10000, 20)


def test_stage_peaks_are_per_stage():
    memory = PeakRss()
    if not memory.per_stage:
        pytest.skip("this platform cannot reset the resident-memory high-water mark")
    memory.start()
    block = np.ones((64 << 20) // 8)  # 64 MB, touched, then freed
    del block
    big = memory.stop()
    memory.start()
    small = memory.stop()
    assert big - small >= 48 << 20
    assert memory.overall >= big


def test_before_after_prints_the_three_ratios(capsys):
    """`--before-after` times the code before issue 12 against today's on a tiny collection."""
    from benchmarks.discovery import main

    main(["--before-after", "--images", "4", "--pairs", "2", "--repeats", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    for stage, unit in (("features", "images/s"), ("verification", "ms per pair both ways"), ("mining", "s per round")):
        line = next(line for line in out.splitlines() if line.startswith(stage))
        assert unit in line and "x" in line.split(unit)[1]
    assert "min 1.0000" in out  # ONNX Runtime's features are float32's
