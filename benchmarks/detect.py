"""Feature-extraction throughput and one-shot query latency.

    python -m benchmarks.detect [--device cpu|cuda] [--images DIR] [--bank-size 1000]

Extracts the pyramids of a folder (default: the demo collection, built in a temporary
folder), then times queries over a bank of ``--bank-size`` cached images. When the
folder has fewer images, its pyramids are repeated to reach that size: the cost of a
query depends only on how many feature maps it slides over, not on their content.
Prints medians over ``--queries`` queries.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.backbone import create_backbone, resolve_device
from engine.detect import DetectConfig, FeatureBank, detect, query_features
from engine.features import FeatureConfig, collection_features
from engine.images import load_rgb
from engine.types import Box
from hitl.oneshot import list_images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="effnet-lite0")
    parser.add_argument("--images", help="folder of images (default: a fresh demo collection)")
    parser.add_argument("--bank-size", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=10)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    backbone = create_backbone(args.model).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.images) if args.images else _demo_images(Path(tmp))
        items = list_images(folder)
        config = FeatureConfig()
        _sync(device)
        start = time.perf_counter()
        feats = collection_features(backbone, items, config, Path(tmp) / "cache", progress=False)
        _sync(device)
        extract_s = time.perf_counter() - start
        start = time.perf_counter()
        collection_features(backbone, items, config, Path(tmp) / "cache", progress=False)
        load_s = time.perf_counter() - start
        cache_bytes = sum(p.stat().st_size for p in (Path(tmp) / "cache").rglob("*.npz"))

    n = len(feats.pyramids)
    reps = -(-args.bank_size // n)
    ids = [f"{i}:{r}" for r in range(reps) for i in feats.image_ids][: args.bank_size]
    pyramids = (feats.pyramids * reps)[: args.bank_size]
    bank = FeatureBank.build(ids, pyramids, device=device, dtype=torch.float16)

    latencies = []
    for q in range(args.queries):
        image_id, path = items[q % n]
        rgb = load_rgb(path)
        h, w = rgb.shape[:2]
        box = Box(w * 0.25, h * 0.25, w * 0.6, h * 0.65)
        _sync(device)
        start = time.perf_counter()
        dets = detect(query_features(backbone, rgb, box), bank, DetectConfig())
        _sync(device)
        latencies.append(time.perf_counter() - start)
    assert dets, "a query over a non-empty bank returns detections"

    print(f"device                      {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print(f"model                       {backbone.model_id}, scales {config.sides()}")
    print(f"feature extraction          {n / extract_s:.2f} images/s ({n} images, {extract_s:.1f} s)")
    print(f"feature load from cache     {n / load_s:.1f} images/s")
    print(f"cache on disk               {cache_bytes / n / 1e6:.3f} MB per image")
    print(f"query over {len(bank)} images    median {statistics.median(latencies) * 1e3:.0f} ms "
          f"(min {min(latencies) * 1e3:.0f}, max {max(latencies) * 1e3:.0f}, {args.queries} queries)")


def _demo_images(tmp: Path) -> Path:
    from hitl.demo import build_demo

    build_demo(tmp / "demo", progress=False)
    return tmp / "demo" / "images"


if __name__ == "__main__":
    main()
