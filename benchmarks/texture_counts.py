"""Texture weighting's collection counts at scale: exact (O(N^2)) against a reference sample.

    python -m benchmarks.texture_counts [--sizes 250 500 1000] [--sample 250] [--exact-max 1000]
                                        [--grow 0.02 --grow-size 600] [--sources 20]

Discovery counts, for each level-3 cell of each image, the other images holding a
near-duplicate of it (:func:`engine.texture.collection_counts`; a page template's cells
are in every page of their source, a copied motif's in none) and weighs the cell by
``(1 + count) ** -0.5``. Compared with every cell of every other image that is O(N^2):
above ``TextureConfig.collection_sample`` images each cell is compared with a reference
sample of about that many images and its count scaled to the collection.

On synthetic collections of the demo's level-3 shape (15 x 20 cells of 112 channels):
``--sources`` sources, each with a template of 40 cells repeated, slightly perturbed (cosine
~0.9), on every one of its pages, the other cells unique. Prints per size the seconds of
the exact counts (up to ``--exact-max`` images) and of the sampled ones, the reference size,
and how far the sampled weights lie from the exact ones on template and on unique cells
(median and 99th percentile of the absolute difference). Then, through the project's
kept counts (:func:`hitl.texture_counts.kept_collection_counts`, in a temporary feature
cache), the seconds to update them when ``--grow`` of a ``--grow-size`` collection is
added, against counting the grown collection from scratch.

The default sample is discovery's (``TextureConfig.collection_sample``, 1,000); the
benchmark's default of 250 shows the same scaling at sizes whose exact count fits a run
(the exact count of 1,000 images takes minutes here, of 2,000 about four times that).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.features import CachedPyramids, FeatureCache, FeatureConfig, FeaturePyramid
from engine.texture import TextureConfig, collection_counts, sampled_reference
from hitl.texture_counts import kept_collection_counts

SHAPE = (15, 20)  # the demo's level 3
CHANNELS = 112
TEMPLATE_CELLS = 40


def synthetic_collection(n: int, sources: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """n L2-normalised (C, 15, 20) maps and a (n, 15, 20) mask of their template cells."""
    g = torch.Generator().manual_seed(seed)
    h, w = SHAPE
    templates = F.normalize(torch.randn(sources, TEMPLATE_CELLS, CHANNELS, generator=g), dim=-1)
    places = torch.stack([torch.randperm(h * w, generator=g)[:TEMPLATE_CELLS] for _ in range(sources)])
    maps, mask = [], torch.zeros(n, h * w, dtype=torch.bool)
    for i in range(n):
        s = i % sources
        cells = torch.randn(h * w, CHANNELS, generator=g)
        cells[places[s]] = templates[s] + 0.05 * torch.randn(TEMPLATE_CELLS, CHANNELS, generator=g)
        mask[i, places[s]] = True
        maps.append(F.normalize(cells, dim=-1).T.reshape(CHANNELS, h, w).contiguous())
    return maps, mask.view(n, h, w)


def _weights(counts: list[torch.Tensor]) -> torch.Tensor:
    return (1.0 + torch.stack(counts)).pow(-0.5)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def compare(sizes: list[int], sample: int, exact_max: int, sources: int) -> None:
    exact_config, sampled_config = TextureConfig(collection_sample=0), TextureConfig(collection_sample=sample)
    print(f"collection counts, {SHAPE[0]}x{SHAPE[1]} cells of {CHANNELS} channels, {sources} sources, "
          f"{torch.get_num_threads()} threads, sample {sample}")
    for n in sizes:
        maps, template = synthetic_collection(n, sources)
        keys = [f"{i:08d}" for i in range(n)]
        reference = sampled_reference(keys, sample)
        sampled, t_sampled = _timed(collection_counts, maps, sampled_config, keys=keys)
        line = (f"  {n:6d} images: sampled {t_sampled:7.1f} s (reference {len(reference) if reference else n} "
                f"images{'' if reference else ', i.e. exact'})")
        if n <= exact_max:
            exact, t_exact = _timed(collection_counts, maps, exact_config)
            diff = (_weights(sampled) - _weights(exact)).abs()
            on, off = diff[template], diff[~template]
            line += (f" | exact {t_exact:7.1f} s ({t_exact / t_sampled:.1f}x) | weight error, template cells: "
                     f"median {on.median():.3f} p99 {on.quantile(0.99):.3f} (exact weight "
                     f"{_weights(exact)[template].median():.3f}); unique cells: p99 {off.quantile(0.99):.4f}")
        print(line, flush=True)


def grow(n: int, fraction: float, sample: int, sources: int) -> None:
    """Seconds to update the kept counts when ``fraction`` of ``n`` images is added."""
    added = max(1, round(n * fraction))
    maps, _ = synthetic_collection(n + added, sources)
    config = TextureConfig(collection_level=0, collection_sample=sample)
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp), "synthetic@1", FeatureConfig(max_side=max(SHAPE), n_scales=1))
        hashes = {f"img{i}": f"{i:064x}" for i in range(n + added)}
        for i, m in enumerate(maps):
            cache.put(hashes[f"img{i}"], FeaturePyramid((m.half(),), (320, 240)))
        pyramids = CachedPyramids(cache, hashes, keep_in_memory=n + added)
        ids = list(hashes)
        for i in ids:
            pyramids(i)  # read every map once, so that only counting is timed
        _, first = _timed(kept_collection_counts, pyramids, config, ids[:n])
        _, update = _timed(kept_collection_counts, pyramids, config, ids)
        _, scratch = _timed(collection_counts, [pyramids(i).levels[0] for i in ids], config,
                            keys=[hashes[i] for i in ids])
    print(f"  kept counts, {n} images then +{added}: first {first:.1f} s, update {update:.1f} s, "
          f"from scratch {scratch:.1f} s ({scratch / max(update, 1e-9):.1f}x the update)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--sample", type=int, default=250, help="reference images at most (discovery's: 1000)")
    parser.add_argument("--exact-max", type=int, default=1000, help="largest size also counted exactly")
    parser.add_argument("--grow", type=float, default=0.02, help="share of images added (0: skip)")
    parser.add_argument("--grow-size", type=int, default=600, help="the collection that grows")
    parser.add_argument("--sources", type=int, default=20)
    args = parser.parse_args(argv)
    compare(args.sizes, args.sample, args.exact_max, args.sources)
    if args.grow > 0:
        grow(args.grow_size, args.grow, args.sample, args.sources)


if __name__ == "__main__":
    main()
