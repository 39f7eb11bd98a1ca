"""Seconds of one training round's stages: trunk cache, refresh, mining, steps.

    python -m benchmarks.train [--device cpu|cuda] [--images N] [--steps N] [--batch-pairs N]
                               [--proposals N] [--max-side N] [--freeze last-stage|none]

Builds a synthetic collection (smooth random textures with motifs pasted at random
places and sizes, so mining has repeated content to find), loads the real ImageNet
EfficientNet-Lite0 backbone, and times a round of :mod:`hitl.rounds` stage by stage, with
device synchronisation: the frozen trunk's inputs (once per collection, cached on disk in
a project), the bank from them (last stage only, the refresh after a round), mining among
shortlist neighbours, and the steps (median per step). Prints a projection to 1,500 images:
the trunk cache and the refresh grow with the collection; mining (20 neighbours per image)
and a step do not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from engine.backbone import create_backbone, resolve_device
from engine.features import FeatureConfig
from engine.mining import MiningConfig, mine_pairs
from engine.train import (
    CachedMaps,
    PixelMaps,
    TrainConfig,
    iteration_generator,
    level_shapes,
    mix_pairs,
    train_step,
)
from engine.trunk_cache import bank_from_inputs, freeze_prefix, inputs_from_tensors
from hitl.rounds import shortlist_neighbours


def synthetic_collection(n: int, height: int = 480, width: int = 640, n_motifs: int = 6, seed: int = 0) -> list[torch.Tensor]:
    """``n`` (3, H, W) uint8 images: a texture each, plus 3 of ``n_motifs`` shared motifs."""
    g = torch.Generator().manual_seed(seed)

    def texture(h: int, w: int, cell: int) -> torch.Tensor:
        small = torch.rand(1, 3, h // cell + 2, w // cell + 2, generator=g)
        return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)

    motifs = [texture(160, 160, 12) for _ in range(n_motifs)]
    images = []
    for _ in range(n):
        img = texture(height, width, 48)
        for m in torch.randint(n_motifs, (3,), generator=g).tolist():
            side = int(160 * (0.7 + 0.7 * torch.rand(1, generator=g).item()))
            patch = F.interpolate(motifs[m][None], size=(side, side), mode="bilinear", align_corners=False)[0]
            y = torch.randint(height - side + 1, (1,), generator=g).item()
            x = torch.randint(width - side + 1, (1,), generator=g).item()
            img[:, y : y + side, x : x + side] = patch
        images.append((img * 255).round().byte())
    return images


def _timed(device: torch.device, fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds), with the device synchronised around it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-pairs", type=int, default=TrainConfig.batch_pairs)
    parser.add_argument("--proposals", type=int, default=MiningConfig.n_proposals)
    parser.add_argument("--max-side", type=int, default=FeatureConfig.max_side, help="cells; 40 is the paper's")
    parser.add_argument("--freeze", default="last-stage", choices=["last-stage", "none"])
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    backbone = create_backbone("effnet-lite0").to(device)
    features = FeatureConfig(max_side=args.max_side)
    config = TrainConfig(batch_pairs=args.batch_pairs, freeze=args.freeze, mining=MiningConfig(n_proposals=args.proposals),
                         features=features)
    images = synthetic_collection(args.images)
    inputs, t_cache = _timed(device, inputs_from_tensors, backbone, images, features)
    bank, t_refresh = _timed(device, bank_from_inputs, backbone, inputs)
    neighbours = shortlist_neighbours(bank, 20)
    pairs, t_mine = _timed(device, mine_pairs, bank, 0, config.mining, neighbours)
    params = freeze_prefix(backbone) if args.freeze == "last-stage" else list(backbone.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
    maps = CachedMaps(backbone, inputs) if args.freeze == "last-stage" else PixelMaps(backbone, images)
    shapes = level_shapes(inputs.sizes, features)
    step_s, n_maps = [], []
    for step in range(args.steps if len(pairs) else 0):
        batch = mix_pairs(pairs, None, config, iteration_generator(0, step))
        n_maps.append(len(torch.unique(torch.cat([batch.anchor, batch.positive, batch.negatives.reshape(-1, 4)])[:, :2], dim=0)))
        _, seconds = _timed(device, train_step, maps, optimizer, batch, shapes, chunk_maps=config.chunk_maps)
        step_s.append(seconds)
    s = statistics.median(step_s) if step_s else float("nan")
    scale = 1500 / args.images
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device                      {device} ({name})")
    print(f"collection                  {args.images} synthetic images 640x480, feature sides {features.sides()}")
    print(f"config                      {config.mining.n_proposals} proposals, {config.batch_pairs} pairs/step, freeze {args.freeze}")
    print(f"trunk cache (once)          {t_cache:8.2f} s   ({1000 * t_cache / args.images:.0f} ms/image, {inputs.nbytes() / 2**20:.0f} MiB)")
    print(f"refresh (last stage)        {t_refresh:8.2f} s   ({1000 * t_refresh / args.images:.0f} ms/image)")
    print(f"mining                      {t_mine:8.2f} s   ({len(pairs)} pairs mined)")
    print(f"step                        {s:8.2f} s   (median of {len(step_s)}, {statistics.median(n_maps) if n_maps else 0:.0f} maps touched)")
    # Mining matches each proposal in its image's 20 shortlist neighbours: its cost does not
    # grow with the collection (at 16 images, 15 are everyone's neighbours: an upper bound).
    print(f"projected 1500 images       trunk cache (first round only) {t_cache * scale / 60:.1f} min; a round: refresh "
          f"{t_refresh * scale / 60:.1f} min, mining ~{t_mine / 60:.1f} min, {config.steps} steps {config.steps * s / 60:.1f} min")


if __name__ == "__main__":
    main()
