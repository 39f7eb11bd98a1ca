"""A tiny demo project shared by the loop's tests: real images, small feature pyramids."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    from hitl.demo import DemoConfig, build_demo

    out = tmp_path_factory.mktemp("demo")
    build_demo(out, seed=1, n_images=8, n_motifs=2, config=DemoConfig(image_size=(240, 180)), progress=False)
    return out


@pytest.fixture
def tiny_project(tiny_demo: Path, tmp_path: Path) -> Path:
    """A fresh project over the tiny demo's images, with its ground truth attached."""
    from db.store import Store
    from hitl.ingest import ingest_paths

    root = tmp_path / "proj"
    shutil.copytree(tiny_demo, root)
    with Store(root / "artminer.duckdb") as store:
        ingest_paths(store, [root / "images"], metadata_csv=root / "metadata.csv", progress=False)
        store.attach_annotations(root / "ground_truth.json", "artminer")
    return root / "artminer.duckdb"
