"""Seconds of one training round, phase by phase, on a collection of N generated images.

    python -m benchmarks.train [--images 300] [--steps 100] [--minutes M] [--[no-]rediscover] [--freeze last-stage|none]
                               [--sample 8] [--workdir DIR] [--device cpu|cuda] [--threads 1]

Writes the streamed synthetic collection of :mod:`benchmarks.discovery` (JPEGs with
recurring motifs; not timed), ingests it into a fresh project and then times what a
project pays for training:

* discovery's feature pass (:func:`engine.features.collection_features`), which also
  keeps the frozen trunk's output as a by-product (:class:`engine.trunk_cache.TrunkByProduct`):
  the per-image cost with the by-product, and on ``--sample`` images the separate
  full-trunk pass a round had to make before (now avoided);
* discovery's texture counts (:func:`hitl.discover.texture_weights`, O(N^2) up to 1,000 images), which it
  keeps beside the features (:mod:`hitl.texture_counts`) for the round to read back;
* one real round (:func:`hitl.rounds.run_round`, self-supervised: mined pairs, no
  verdict, no annotation) phase by phase: loading, measuring, mining (trunk inputs read
  from the cache, the parent's bank and the texture counts read back, shortlist,
  mining), the steps, the refresh of the collection's features by the new model (last
  stage only), its measurement, and re-discovery when ``--rediscover`` (the whole
  :func:`hitl.discover.run_discovery`).

With ``--workdir`` the images and the built project (ingested, feature pass and texture
counts done) are kept there, and every run times its round on a fresh copy of it.

Prints the progress of the steps with an ETA, the phases in seconds and per image, and a
projection to 1,500 images (labelled as such): phases that read or refresh every image
grow with N; mining's proposals (among 20 shortlist neighbours) and the steps do not.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.discovery import write_synthetic_folder
from engine.backbone import create_backbone
from engine.features import CachedPyramids, FeatureCache, FeatureConfig, collection_features
from engine.texture import sampled_reference
from engine.train import IterationLog, TrainConfig
from engine.trunk_cache import TrunkByProduct, split_trunk, trunk_inputs
from hitl.discover import DiscoverConfig, texture_weights
from hitl.ingest import ingest_paths
from hitl.project import load_model, open_project
from hitl.rounds import PHASES, RoundConfig, run_round

TARGET = 1500  # images of the projection
# Phases whose work reads, refreshes or searches every image (grow with N); the others
# (loading the model, mining's 2,000 proposals, the steps) do not.
GROWS = {"measuring the parent model", "mining the training pairs", "refreshing the collection's features",
         "measuring the new model", "re-discovering with the new model"}


class PhaseClock:
    """Wall seconds of each phase of a round, from :func:`hitl.rounds.run_round`'s ``on_phase``."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, float]] = []

    def __call__(self, index: int, total: int, name: str) -> None:
        self.starts.append((name, time.perf_counter()))
        print(f"  phase {index}/{total}: {name}", flush=True)

    def durations(self, end: float) -> dict[str, float]:
        marks = self.starts + [("", end)]
        return {name: marks[i + 1][1] - t for i, (name, t) in enumerate(self.starts)}


class StepProgress:
    """Prints done/total, seconds per step and an ETA every tenth of the steps."""

    def __init__(self) -> None:
        self.began = None
        self.done = 0

    def __call__(self, log: IterationLog, total: int) -> None:
        self.began = self.began or time.perf_counter() - log.step_s
        self.done = log.iteration + 1
        if self.done % max(1, total // 10) == 0 or self.done == total:
            spent = time.perf_counter() - self.began
            eta = spent / self.done * (total - self.done)
            print(f"  steps {self.done}/{total}, {spent / self.done:.2f} s/step, loss {log.loss:.3f}, ETA {eta:.0f} s",
                  flush=True)


def build_project(base: Path, folder: Path, args) -> tuple[float, float, float]:
    """Ingest ``folder`` into a new project at ``base`` and run discovery's feature pass with
    the trunk by-product; (seconds of that pass, s/image of features alone and of the
    separate trunk pass on ``args.sample`` images)."""
    base.mkdir(parents=True, exist_ok=True)
    store, paths = open_project(base / "artminer.duckdb", create=True)
    ingest_paths(store, [folder], progress=False)
    backbone = load_model(store, None, args.device)
    features = FeatureConfig()
    images = store.list_images()
    items, hashes = [(i.image_id, i.path) for i in images], {i.image_id: i.sha256 for i in images}
    start = time.perf_counter()
    collection_features(backbone, items, features, paths.features, progress=False, hashes=hashes, keep=False,
                        extract=TrunkByProduct(paths.features, backbone, features))
    features_s = time.perf_counter() - start
    sample = items[: args.sample]
    start = time.perf_counter()
    collection_features(backbone, sample, features, None, progress=False, hashes=hashes)  # without the by-product
    plain_s = (time.perf_counter() - start) / len(sample)
    start = time.perf_counter()
    trunk_inputs(backbone, sample, features, None, hashes, progress=False)  # the pass a round no longer makes
    separate_s = (time.perf_counter() - start) / len(sample)
    store.close()
    print(f"discovery's feature pass with the trunk by-product: {features_s:.0f} s ({features_s / len(items):.2f} "
          f"s/image); on {len(sample)} images: features alone {plain_s:.2f} s/image, the separate trunk pass it "
          f"replaces {separate_s:.2f} s/image", flush=True)
    return features_s, plain_s, separate_s


def discovery_counts(base: Path) -> float:
    """Seconds of discovery's texture counts over the collection (O(N^2) up to
    ``TextureConfig.collection_sample`` images, against a reference sample above; kept beside
    the features by :func:`hitl.discover.texture_weights`; read back when kept already)."""
    store, paths = open_project(base / "artminer.duckdb")
    images = store.list_images()
    hashes = {i.image_id: i.sha256 for i in images}
    pyramids = CachedPyramids(FeatureCache(paths.features, load_model(store, None, "cpu").model_id, FeatureConfig()), hashes)
    start = time.perf_counter()
    texture = DiscoverConfig().verify.texture
    texture_weights(pyramids, texture, [i.image_id for i in images])
    seconds = time.perf_counter() - start
    store.close()
    reference = sampled_reference([hashes[i.image_id] for i in images], texture.collection_sample)
    against = f"a reference sample of {len(reference)} images" if reference else "every other image"
    print(f"discovery's texture counts (against {against}, kept for the round): {seconds:.0f} s", flush=True)
    return seconds


def time_layouts(device: str, repeats: int = 3) -> None:
    """Prints the last stage's seconds on 16 maps of the cached trunk's shape at the demo's
    reference level (80 x 30 x 40), plain layout against channels-last (what
    :func:`engine.trunk_cache.last_stage` uses), forward and forward + backward,
    interleaved and the fastest of ``repeats`` each (a busy machine slows both alike)."""
    model = create_backbone("effnet-lite0").to(device).eval()
    _, last = split_trunk(model)
    x = torch.randn(16, 80, 30, 40, device=device)
    best: dict[tuple[str, bool], float] = {}
    for _ in range(repeats):
        for layout in (torch.contiguous_format, torch.channels_last):
            for backward in (False, True):
                start = time.perf_counter()
                with torch.set_grad_enabled(backward):
                    out = last(x.contiguous(memory_format=layout))
                    if backward:
                        out.sum().backward()
                key = ("channels-last" if layout == torch.channels_last else "plain", backward)
                best[key] = min(best.get(key, float("inf")), time.perf_counter() - start)
    for backward in (False, True):
        plain, cl = best[("plain", backward)], best[("channels-last", backward)]
        print(f"last stage, 16 maps 80x30x40, {'forward + backward' if backward else 'forward'}: plain {plain:.2f} s, "
              f"channels-last {cl:.2f} s ({plain / cl:.1f}x)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--minutes", type=float, help="time budget of the steps")
    parser.add_argument("--rediscover", action=argparse.BooleanOptionalAction, default=False,
                        help="re-run the whole discovery with the new model (default: no)")
    parser.add_argument("--freeze", default="last-stage", choices=["last-stage", "none"],
                        help="train the last stage on the cached trunk (default) or every layer")
    parser.add_argument("--sample", type=int, default=8, help="images timed for the former separate trunk pass")
    parser.add_argument("--workdir", help="keeps the generated images for the next run (default: temporary)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layouts", action="store_true", help="only time the last stage's memory layouts")
    args = parser.parse_args(argv)
    if args.images < 2 or args.steps < 1 or args.sample < 1:
        parser.error("--images must be >= 2, --steps and --sample >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.layouts:
        return time_layouts(args.device)
    work = Path(args.workdir) if args.workdir else None
    if work:
        work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        folder = (work or Path(tmp)) / f"synthetic-{args.images}-{args.seed}"
        write_synthetic_folder(folder, args.images, args.seed)
        # With --workdir the ingested project and its first feature pass are kept too
        # (work/project-N-seed, built once); every run times its round on a fresh copy.
        base = (work or Path(tmp)) / f"project-{args.images}-{args.seed}"
        features_s = plain_s = separate_s = None
        if not (base / "built").is_file():  # the marker is written last: a cut-short build is redone
            shutil.rmtree(base, ignore_errors=True)
            features_s, plain_s, separate_s = build_project(base, folder, args)
            (base / "built").write_text("")
        else:
            print(f"reusing {base} (ingested, discovery's feature pass done; not timed again)", flush=True)
        counts_s = discovery_counts(base)
        shutil.copytree(base, Path(tmp) / "round")
        store, paths = open_project(Path(tmp) / "round" / "artminer.duckdb")
        train = replace(TrainConfig(), steps=args.steps, minutes=args.minutes, features=FeatureConfig(), freeze=args.freeze)
        clock, began = PhaseClock(), time.perf_counter()
        report = run_round(store, paths, RoundConfig(sources=("mined",), rediscover=args.rediscover, train=train),
                           device=args.device, progress=StepProgress(), show_progress=False, on_phase=clock,
                           log=lambda line: print("  " + line, flush=True))
        end = time.perf_counter()
        store.close()
    phases = clock.durations(end)
    scale = TARGET / args.images
    print(f"\nround on {args.images} synthetic images ({report.steps} steps, freeze {args.freeze}, re-discovery "
          f"{'on' if args.rediscover else 'off'}, {torch.get_num_threads()} thread(s)): {end - began:.0f} s")
    print(f"{'phase':<36} {'seconds':>8} {'per image':>10} {f'projected, {TARGET} images':>24}")
    projected = 0.0
    for name in PHASES:
        if name not in phases:
            continue
        grows = name in GROWS
        at_target = phases[name] * scale if grows else phases[name]
        if name == "training":  # a round of the default length (fewer steps may have been timed)
            at_target *= TrainConfig.steps / max(1, report.steps)
        projected += at_target
        per_image = f"{phases[name] / args.images:.3f}" if grows else "-"
        note = " (x N)" if grows else f" ({TrainConfig.steps} steps)" if name == "training" else ""
        print(f"{name:<36} {phases[name]:>8.1f} {per_image:>10} {at_target:>19.0f} s{note}")
    print(f"{'round':<36} {end - began:>8.1f} {'':>10} {projected:>19.0f} s  = {projected / 60:.1f} min (projection)")
    if features_s is not None:
        print(f"{'(first discovery: trunk by-product)':<36} {features_s:>8.1f} {features_s / args.images:>10.3f} "
              f"{features_s * scale:>19.0f} s; the by-product adds {(features_s / args.images - plain_s) * TARGET / 60:.1f} "
              f"min there, a separate trunk pass in the round would add {separate_s * TARGET / 60:.0f} min")
    print(f"{'(discovery: texture counts, kept)':<36} {counts_s:>8.1f} {'':>10} {counts_s * scale ** 2:>19.0f} s (x N^2, "
          "an upper bound above TextureConfig.collection_sample images; 0 when read back)")
    print(f"(mining is projected x N: an upper bound, its {train.mining.n_proposals} proposals among 20 neighbours "
          "do not grow with N; timings under other load are not comparable: compare lines of one run)")


if __name__ == "__main__":
    main()
