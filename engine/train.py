"""Dataset-specific fine-tuning of the backbone (paper §3.2), mined and expert pairs mixed.

The loop reads top to bottom in :func:`train`: every iteration (re)extracts the
collection's features when due, mines spatially consistent pairs with them
(:mod:`engine.mining`), mixes in expert pairs, and takes **one** Adam step on the
paper's triplet loss. Resumable state (weights, optimizer, iteration, history) is
written every ``checkpoint_every`` iterations; the final model goes through
:func:`engine.backbone.save_checkpoint` with its config and parent.

Speed. The paper re-extracts every feature of the collection before each mining round
(about 3 minutes per iteration on a GTX 1080 Ti). Here ``refresh_every`` re-extracts
them every N iterations instead: mining then uses features up to N-1 Adam steps old,
which at lr 1e-5 barely move, while the gradient step always recomputes its cells with
the current weights. ``refresh_every=1`` is the paper's schedule.

Randomness. Iteration ``i`` draws everything from a generator seeded with
``(seed, i)``, so a run is reproducible and a resumed run equals a straight one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.backbone import STRIDE, Backbone, save_checkpoint
from engine.detect import FeatureBank
from engine.features import FeatureConfig, level_shape
from engine.mining import MiningConfig, PairBatch, mine_pairs
from engine.types import ModelRef

__all__ = [
    "PairBatch", "TrainConfig", "IterationLog", "TrainResult", "triplet_loss", "train_step",
    "embed_collection", "level_shapes", "train",
]

STATE_FILE = "train_state.pt"
MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 200  # paper: ~200 rounds of mining + one gradient step
    lambda_: float = 0.8  # paper: λ = 0.8 in the triplet loss
    lr: float = 1e-5  # paper: Adam, learning rate 1e-5 ...
    betas: tuple[float, float] = (0.9, 0.99)  # ... and β = [0.9, 0.99]
    batch_pairs: int = 1024  # feature pairs per gradient step (mined + expert); the step's cost knob
    expert_ratio: float = 0.5  # share of each batch drawn from expert pairs, when there are any
    refresh_every: int = 5  # re-extract the collection's features every N iterations (paper: 1)
    checkpoint_every: int = 25  # resumable state every N iterations; a multiple of refresh_every
    seed: int = 0
    amp: bool = True  # bfloat16 autocast on CUDA (no loss scaling needed); ignored on CPU
    chunk_maps: int = 32  # feature maps per forward/backward (bounds activation memory)
    mining: MiningConfig = field(default_factory=MiningConfig)  # paper §3.1 defaults; holds N_neg = 20
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_pairs", "refresh_every", "checkpoint_every", "chunk_maps"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.expert_ratio <= 1.0:
            raise ValueError(f"TrainConfig.expert_ratio must be in [0, 1], got {self.expert_ratio}")
        if self.checkpoint_every % self.refresh_every:
            # A resumed run re-extracts features first; only at a refresh iteration is that
            # what the uninterrupted run would have done.
            raise ValueError(
                f"TrainConfig.checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"refresh_every ({self.refresh_every}) so a resumed run equals a straight one"
            )

    @property
    def n_negatives(self) -> int:
        return self.mining.n_negatives

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        data["betas"] = tuple(data["betas"])
        data["mining"] = MiningConfig(**data["mining"])
        data["features"] = FeatureConfig(**data["features"])
        return cls(**data)


@dataclass(frozen=True)
class IterationLog:
    iteration: int
    loss: float  # nan when the iteration had no pairs to learn from
    n_mined: int  # pairs mined this iteration (before mixing)
    n_used_mined: int
    n_used_expert: int
    refresh_s: float
    mine_s: float
    step_s: float


@dataclass(frozen=True)
class TrainResult:
    model: ModelRef  # the new model version (checkpoint path, parent)
    iterations: int
    resumed_from: int  # 0 for a fresh run
    history: tuple[IterationLog, ...]


# ---------------------------------------------------------------- the loss


def triplet_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, mask: torch.Tensor, lambda_: float = 0.8) -> torch.Tensor:
    """The paper's loss (eq. 1), averaged over pairs.

    ``L = -min(λ, s(P1, P2)) + 1/N Σ_i max(s(P1, N_i), 1 - λ)``; the positive term is
    dropped where ``mask`` is False (pairs that only have negatives).

    Args:
        s_pos: (P,) cosine similarities of the positive pairs.
        s_neg: (P, N) similarities of each anchor to its negatives.
        mask: (P,) bool.

    Returns:
        Scalar loss (0 for an empty batch).
    """
    if s_pos.shape[0] == 0:
        return s_neg.sum() * 0.0
    positive = -torch.clamp(s_pos, max=lambda_) * mask
    negative = torch.clamp(s_neg, min=1.0 - lambda_).mean(dim=1)
    return (positive + negative).mean()


# ---------------------------------------------------------------- features of the collection


def level_shapes(image_sizes: Sequence[tuple[int, int]], config: FeatureConfig) -> list[list[tuple[int, int]]]:
    """(h, w) cells of every image at every level: ``[image][level]``."""
    return [[level_shape(size, side) for side in config.image_sides(size)] for size in image_sizes]


def image_sizes_of(images: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """(W, H) of (3, H, W) image tensors."""
    return [(int(img.shape[-1]), int(img.shape[-2])) for img in images]


def _pixels(image: torch.Tensor, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(3, H, W) uint8 or float in [0, 1] -> (1, 3, h*16, w*16) float on ``device``."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"an image must be a (3, H, W) tensor, got shape {tuple(image.shape)}")
    image = image.to(device)
    image = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
    size = (shape[0] * STRIDE, shape[1] * STRIDE)
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)


def _forward(backbone: Backbone, images: Sequence[torch.Tensor], ids: Sequence[int], shape: tuple[int, int], amp: bool) -> torch.Tensor:
    """L2-normalised (B, C, h, w) float32 features of images ``ids``, all at ``shape``."""
    device = next(backbone.parameters()).device
    pixels = torch.cat([_pixels(images[i], shape, device) for i in ids])
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        feats = backbone(pixels)
    return F.normalize(feats.float(), dim=1)


@torch.no_grad()
def embed_collection(backbone: Backbone, images: Sequence[torch.Tensor], config: FeatureConfig,
                     image_sizes: Sequence[tuple[int, int]] | None = None, batch_size: int = 32,
                     amp: bool = True) -> FeatureBank:
    """The current features of every image at every level, as a padded bank on the device.

    Args:
        images: N (3, H, W) tensors, uint8 or float in [0, 1]; a longer side of
            ``config.max_side * 16`` pixels is enough (larger only costs time).
        image_sizes: (W, H) that define the level shapes (default: the tensors' own), so
            pair references agree with pyramids computed from the original files.
    """
    sizes = list(image_sizes) if image_sizes is not None else image_sizes_of(images)
    shapes = level_shapes(sizes, config)
    device = next(backbone.parameters()).device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    levels, valid = [], []
    for k in range(config.n_scales):
        level_k = torch.tensor([s[k] for s in shapes], device=device)
        side = int(level_k.max())
        bank = None
        for shape, ids in _groups({i: shapes[i][k] for i in range(len(images))}, batch_size):
            feats = _forward(backbone, images, ids, shape, amp)
            if bank is None:
                bank = torch.zeros(len(images), feats.shape[1], side, side, dtype=dtype, device=device)
            bank[ids, :, : shape[0], : shape[1]] = feats.to(dtype)
        levels.append(bank)
        valid.append(level_k)
    ids = [str(i) for i in range(len(images))]
    return FeatureBank(ids, levels, valid, torch.tensor(sizes, dtype=torch.float32, device=device))


def _groups(shape_of: dict[int, tuple[int, int]], size: int) -> list[tuple[tuple[int, int], list[int]]]:
    """Keys grouped by equal shape, in chunks of at most ``size``, in a fixed order."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for key in sorted(shape_of):
        by_shape.setdefault(shape_of[key], []).append(key)
    return [(shape, ids[i : i + size]) for shape, ids in sorted(by_shape.items()) for i in range(0, len(ids), size)]


# ---------------------------------------------------------------- one gradient step


def train_step(backbone: Backbone, optimizer: torch.optim.Optimizer, images: Sequence[torch.Tensor],
               batch: PairBatch, feature_config: FeatureConfig, *,
               image_sizes: Sequence[tuple[int, int]] | None = None, lambda_: float = 0.8,
               amp: bool = True, chunk_maps: int = 32) -> float:
    """One Adam step on the triplet loss of ``batch``; returns the loss.

    Only the (image, level) maps the batch touches are recomputed, with gradient. When
    they do not fit one chunk, the step runs in two passes (as in gradient caching): the
    cells' features without gradient, the loss and its gradient with respect to those
    cells, then each chunk again with gradient, back-propagating the cached cell
    gradients. The result equals one big forward/backward, in bounded memory.

    The backbone stays in eval mode: BatchNorm keeps its ImageNet statistics (batches
    mix images and scales of every size) and both passes see the same function.
    """
    if len(batch) == 0:
        raise ValueError("train_step got an empty pair batch")
    sizes = list(image_sizes) if image_sizes is not None else image_sizes_of(images)
    shapes = level_shapes(sizes, feature_config)
    cells, pair_index = _unique_cells(batch)
    _check_cells(cells, shapes)
    maps, cell_map = torch.unique(cells[:, :2], dim=0, return_inverse=True)  # (M, 2) image, level
    chunks = _groups({m: shapes[i][k] for m, (i, k) in enumerate(maps.tolist())}, chunk_maps)
    backbone.eval()
    optimizer.zero_grad(set_to_none=True)
    if len(chunks) == 1:
        feats = _chunk_cells(backbone, images, maps, cells, cell_map, chunks[0], amp)[1]
        loss = _pair_loss(feats, pair_index, batch, lambda_)
        loss.backward()
    else:
        with torch.no_grad():
            parts = [_chunk_cells(backbone, images, maps, cells, cell_map, chunk, amp) for chunk in chunks]
        feats = torch.zeros(len(cells), parts[0][1].shape[1], device=parts[0][1].device)
        for sel, part in parts:
            feats[sel] = part
        feats.requires_grad_(True)
        loss = _pair_loss(feats, pair_index, batch, lambda_)
        loss.backward()
        for chunk, (sel, _) in zip(chunks, parts):
            _, part = _chunk_cells(backbone, images, maps, cells, cell_map, chunk, amp)
            part.backward(feats.grad[sel])
    optimizer.step()
    return float(loss.detach())


def _unique_cells(batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Distinct cells of a batch (U, 4) and where each pair's anchor/positive/negatives are."""
    p, n = len(batch), batch.n_negatives
    positive = torch.where(batch.positive_mask[:, None], batch.positive, batch.anchor)
    refs = torch.cat([batch.anchor, positive, batch.negatives.reshape(-1, 4)]).cpu()
    cells, inverse = torch.unique(refs, dim=0, return_inverse=True)
    index = {"anchor": inverse[:p], "positive": inverse[p : 2 * p], "negatives": inverse[2 * p :].view(p, n)}
    return cells, index


def _check_cells(cells: torch.Tensor, shapes: list[list[tuple[int, int]]]) -> None:
    n_images, n_levels = len(shapes), len(shapes[0]) if shapes else 0
    image, level, row, col = cells.T
    if (image < 0).any() or (image >= n_images).any() or (level < 0).any() or (level >= n_levels).any():
        raise ValueError(f"pair batch refers to images/levels outside the {n_images} images x {n_levels} levels given")
    hw = torch.tensor(shapes).view(n_images, n_levels, 2)[image, level]
    bad = (row < 0) | (col < 0) | (row >= hw[:, 0]) | (col >= hw[:, 1])
    if bad.any():
        i, k, r, c = cells[bad.nonzero()[0, 0]].tolist()
        raise ValueError(f"pair batch cell (row {r}, col {c}) is outside image {i}'s level-{k} map {tuple(hw[bad][0].tolist())}")


def _chunk_cells(backbone, images, maps, cells, cell_map, chunk, amp) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward one chunk of same-shape maps; return (cell indices, their (n, C) features)."""
    shape, members = chunk
    feats = _forward(backbone, images, [int(maps[m, 0]) for m in members], shape, amp)  # (B, C, h, w)
    slot = torch.full((len(maps),), -1, dtype=torch.long)
    slot[members] = torch.arange(len(members))
    sel = (slot[cell_map] >= 0).nonzero()[:, 0]
    device = feats.device
    return sel.to(device), feats[slot[cell_map[sel]].to(device), :, cells[sel, 2].to(device), cells[sel, 3].to(device)]


def _pair_loss(feats: torch.Tensor, index: dict[str, torch.Tensor], batch: PairBatch, lambda_: float) -> torch.Tensor:
    device = feats.device
    anchor = feats[index["anchor"].to(device)]  # (P, C)
    s_pos = (anchor * feats[index["positive"].to(device)]).sum(-1)  # (P,)
    s_neg = torch.einsum("pc,pnc->pn", anchor, feats[index["negatives"].to(device)])  # (P, N)
    return triplet_loss(s_pos, s_neg, batch.positive_mask.to(device), lambda_)


# ---------------------------------------------------------------- the loop


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """The CPU generator of one iteration: a function of (seed, iteration) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration)


def mix_pairs(mined: PairBatch, expert: PairBatch | None, config: TrainConfig, generator: torch.Generator) -> PairBatch:
    """At most ``batch_pairs`` pairs: ``expert_ratio`` of them expert pairs (when there are
    any), the rest mined; either side fills what the other cannot.

    Pairs are drawn by whole groups sharing an (anchor map, positive map) — the 4 corners
    of one verified match, the cells of one expert link — so a batch touches few maps:
    the gradient step costs per map it recomputes, not per pair.
    """
    n_expert_avail = len(expert) if expert is not None else 0
    n_expert = min(n_expert_avail, round(config.batch_pairs * config.expert_ratio))
    n_mined = min(len(mined), config.batch_pairs - n_expert)
    n_expert = min(n_expert_avail, config.batch_pairs - n_mined)
    parts = [mined.select(_grouped_order(mined, generator)[:n_mined])]
    if n_expert:
        parts.append(expert.select(_grouped_order(expert, generator)[:n_expert]))
    return PairBatch.cat(parts)


def _grouped_order(batch: PairBatch, generator: torch.Generator) -> torch.Tensor:
    """(P,) pair order: groups of equal (anchor map, positive-or-negative map) in random order."""
    if len(batch) == 0:
        return torch.zeros(0, dtype=torch.long)
    keys = torch.cat([batch.anchor[:, :2], batch.negatives[:, 0, :2]], dim=1)  # negatives live in P2's map
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    rank = torch.randperm(int(group.max()) + 1, generator=generator)[group]
    return rank.argsort(stable=True)


def train(backbone: Backbone, images: Sequence[torch.Tensor], config: TrainConfig = TrainConfig(),
          expert_pairs: PairBatch | None = None, out_dir: str | Path = "train-run", resume: bool = True,
          progress: Callable[[IterationLog, int], None] | None = None,
          image_sizes: Sequence[tuple[int, int]] | None = None) -> TrainResult:
    """Fine-tune ``backbone`` in place on its collection; write the new model to ``out_dir``.

    Args:
        images: the collection, N (3, H, W) uint8 or [0, 1] float tensors (any
            indexable sequence; a lazy loader works). Pair references index it.
        expert_pairs: pairs from expert verdicts (``hitl.positives``), or None.
        out_dir: holds ``train_state.pt`` (resumable state) and ``model.pt`` (result).
        resume: continue from ``out_dir``'s state when it exists (same config required,
            except ``iterations``).
        progress: called after every iteration with its log and the total.
        image_sizes: (W, H) defining level shapes (default: the tensors' sizes).

    Returns:
        The new model's ref (``<arch>@<hash>``, parent = the starting model) and the history.
    """
    if len(images) < 2:
        raise ValueError(f"training needs a collection of at least 2 images, got {len(images)}")
    if expert_pairs is not None and expert_pairs.n_negatives != config.n_negatives:
        raise ValueError(f"expert pairs have {expert_pairs.n_negatives} negatives, the config {config.n_negatives}")
    sizes = list(image_sizes) if image_sizes is not None else image_sizes_of(images)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot use {out_dir} as the training folder ({err.strerror or err})") from err
    optimizer = torch.optim.Adam(backbone.parameters(), lr=config.lr, betas=config.betas)
    parent, start, history = backbone.model_id, 0, []
    if resume and (out_dir / STATE_FILE).is_file():
        parent, start, history = _load_state(out_dir / STATE_FILE, backbone, optimizer, config)
    bank = None
    for it in range(start, config.iterations):
        generator = iteration_generator(config.seed, it)
        tick = time.perf_counter()
        # expert_ratio 1.0 trains on expert pairs alone: no features to refresh, nothing to mine.
        mine = config.expert_ratio < 1.0
        if mine and (bank is None or it % config.refresh_every == 0):
            bank = embed_collection(backbone, images, config.features, sizes, amp=config.amp)
        tock = time.perf_counter()
        mined = mine_pairs(bank, generator, config.mining) if mine else PairBatch.empty(config.n_negatives)
        batch = mix_pairs(mined, expert_pairs, config, generator)
        tack = time.perf_counter()
        loss = math.nan
        if len(batch):
            loss = train_step(backbone, optimizer, images, batch, config.features, image_sizes=sizes,
                              lambda_=config.lambda_, amp=config.amp, chunk_maps=config.chunk_maps)
        n_mined_used = int((batch.source == PairBatch.MINED).sum())
        log = IterationLog(it, loss, len(mined), n_mined_used, len(batch) - n_mined_used,
                           tock - tick, tack - tock, time.perf_counter() - tack)
        history.append(log)
        if (it + 1) % config.checkpoint_every == 0:
            _save_state(out_dir / STATE_FILE, backbone, optimizer, config, parent, it + 1, history)
        if progress is not None:
            progress(log, config.iterations)
    ref = save_checkpoint(backbone, out_dir / MODEL_FILE, parent=parent, config=_model_config(config))
    return TrainResult(ref, config.iterations, start, tuple(history))


def _model_config(config: TrainConfig) -> dict:
    return {"train": config.to_dict(), "features": asdict(config.features)}


def _save_state(path: Path, backbone: Backbone, optimizer, config: TrainConfig, parent: str, done: int,
                history: list[IterationLog]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "iteration": done,
        "trunk": backbone.trunk.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": config.to_dict(),
        "parent": parent,
        # Iteration i's randomness is iteration_generator(seed, i): (seed, next iteration)
        # is the whole RNG state a resumed run needs.
        "rng": {"seed": config.seed, "next_iteration": done},
        "history": [asdict(h) for h in history],
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a run killed while writing keeps the previous state


def _load_state(path: Path, backbone: Backbone, optimizer, config: TrainConfig) -> tuple[str, int, list[IterationLog]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        saved = TrainConfig.from_dict(state["config"])
    except Exception as err:  # noqa: BLE001 - any unreadable state means the same to the user
        raise ValueError(f"{path}: not a readable training state ({err}); remove it or pass resume=False") from err
    if replace(saved, iterations=config.iterations) != config:
        raise ValueError(f"{path} holds a run with a different config; use another out_dir or resume=False")
    if state["iteration"] > config.iterations:
        raise ValueError(f"{path} is at iteration {state['iteration']}, past the {config.iterations} asked for")
    backbone.trunk.load_state_dict(state["trunk"])
    optimizer.load_state_dict(state["optimizer"])
    history = [IterationLog(**h) for h in state["history"]]
    return state["parent"], int(state["iteration"]), history
