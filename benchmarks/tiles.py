"""Tile pyramid of a large scan, and the crops the synced zoom reads from it.

    python -m benchmarks.tiles [--width 20000] [--height 15000]

Makes a synthetic JPEG scan (not timed), cuts its pyramid once (`hitl.tiles`), then reads
what the review's synced zoom asks for: a 520 x 390 view at full resolution, the same
view zoomed out to the whole image, and the overview. Prints the times and the
pyramid's size on disk beside the scan's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.images import set_max_pixels
from hitl.tiles import build_pyramid
from hitl.views.zoom_view import ZoomView, detail, overview


def make_scan(path: Path, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    small = (rng.random((height // 100, width // 100, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=85)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=20_000)
    parser.add_argument("--height", type=int, default=15_000)
    args = parser.parse_args()
    set_max_pixels(args.width * args.height + 1)  # the project setting max_image_pixels does this
    with tempfile.TemporaryDirectory() as tmp:
        scan = Path(tmp) / "scan.jpg"
        make_scan(scan, args.width, args.height)
        start = time.perf_counter()
        pyramid = build_pyramid(scan, Path(tmp) / "tiles")
        built = time.perf_counter() - start
        centre = ZoomView(args.width / 2, args.height / 2, 1.0)
        timings = {}
        whole = ZoomView(centre.cx, centre.cy, 520 / args.width)  # the image fits the canvas
        detail(pyramid, ZoomView(100.0, 100.0, 1.0), (520, 390))  # first JPEG encode: codec set-up
        for name, view in (("full-resolution view", centre), ("whole-image view", whole)):
            start = time.perf_counter()
            found = detail(pyramid, view, (520, 390))
            timings[name] = (time.perf_counter() - start, found["level"])
        start = time.perf_counter()
        overview(pyramid)
        timings["overview"] = (time.perf_counter() - start, None)
        print(f"{args.width:,} x {args.height:,} scan ({scan.stat().st_size / 1e6:.1f} MB JPEG): pyramid of "
              f"{pyramid.levels} levels cut in {built:.1f} s, {folder_bytes(Path(tmp) / 'tiles') / 1e6:.1f} MB on disk")
        for name, (seconds, level) in timings.items():
            print(f"  {name}: {seconds * 1000:.0f} ms" + (f" (level {level})" if level is not None else ""))


if __name__ == "__main__":
    main()
