"""Seconds per fine-tuning iteration: feature refresh, mining and the gradient step.

    python -m benchmarks.train [--device cpu|cuda] [--images N] [--iterations N]
                               [--batch-pairs N] [--proposals N] [--refresh-every N]

Builds a synthetic collection (smooth random textures with motifs pasted at random
places and sizes, so mining has repeated content to find), loads the real ImageNet
EfficientNet-Lite0 backbone, and times the loop of :func:`engine.train.train` phase by
phase, with device synchronisation. Prints medians per iteration and a projection to
the target workload (200 iterations over 1,500 images): refresh and candidate matching
grow with the collection, verification and the step do not.
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
from engine.train import TrainConfig, embed_collection, iteration_generator, mix_pairs, train_step


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
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch-pairs", type=int, default=TrainConfig.batch_pairs)
    parser.add_argument("--proposals", type=int, default=MiningConfig.n_proposals)
    parser.add_argument("--refresh-every", type=int, default=TrainConfig.refresh_every)
    parser.add_argument("--max-side", type=int, default=FeatureConfig.max_side, help="cells; 40 is the paper's")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    backbone = create_backbone("effnet-lite0").to(device)
    features = FeatureConfig(max_side=args.max_side)
    config = TrainConfig(batch_pairs=args.batch_pairs, refresh_every=args.refresh_every,
                         checkpoint_every=args.refresh_every, mining=MiningConfig(n_proposals=args.proposals),
                         features=features)
    images = synthetic_collection(args.images)
    optimizer = torch.optim.Adam(backbone.parameters(), lr=config.lr, betas=config.betas)

    embed_collection(backbone, images[:2], features)  # warm-up: kernels, allocator
    refresh, mine_s, step_s, n_pairs, n_maps = [], [], [], [], []
    for it in range(args.iterations):
        bank, seconds = _timed(device, embed_collection, backbone, images, features, amp=config.amp)
        refresh.append(seconds)
        generator = iteration_generator(config.seed, it)
        mined, seconds = _timed(device, mine_pairs, bank, generator, config.mining)
        mine_s.append(seconds)
        batch = mix_pairs(mined, None, config, generator)
        n_pairs.append(len(mined))
        n_maps.append(len(torch.unique(torch.cat([batch.anchor, batch.positive, batch.negatives.reshape(-1, 4)])[:, :2], dim=0)))
        if len(batch):
            _, seconds = _timed(device, train_step, backbone, optimizer, images, batch, features,
                                amp=config.amp, chunk_maps=config.chunk_maps)
            step_s.append(seconds)
    _report(args, device, config, refresh, mine_s, step_s, n_pairs, n_maps)


def _report(args, device, config, refresh, mine_s, step_s, n_pairs, n_maps) -> None:
    med = statistics.median
    r, m, s = med(refresh), med(mine_s), med(step_s) if step_s else float("nan")
    per_iter = m + s + r / config.refresh_every
    # Projection: refresh and candidate matching scale with the collection, the step with
    # the batch (at most batch_pairs pairs touch a bounded number of maps).
    scale = 1500 / args.images
    target = 200 * (m * scale + s + r * scale / config.refresh_every)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device                      {device} ({name})")
    print(f"collection                  {args.images} synthetic images 640x480, feature sides {config.features.sides()}")
    print(f"config                      {config.mining.n_proposals} proposals, batch {config.batch_pairs} pairs, refresh every {config.refresh_every}")
    print(f"refresh (all features)      {r:8.2f} s   ({1000 * r / args.images:.0f} ms/image, 7 levels)")
    print(f"mining                      {m:8.2f} s   ({med(n_pairs):.0f} pairs mined)")
    print(f"gradient step               {s:8.2f} s   ({med(n_maps):.0f} maps touched)")
    print(f"per iteration               {per_iter:8.2f} s   (mining + step + refresh / {config.refresh_every})")
    print(f"projected 200 it x 1500 img {target / 60:8.1f} min (refresh and mining x {scale:.0f}, step as measured)")


if __name__ == "__main__":
    main()
