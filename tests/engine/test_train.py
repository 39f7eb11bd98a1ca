import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.backbone import load_checkpoint
from engine.features import FeatureConfig, extract_pyramids
from engine.mining import MiningConfig, PairBatch, mine_pairs
from engine.train import (
    L2SP,
    STATE_FILE,
    CachedMaps,
    PixelMaps,
    TrainConfig,
    embed_collection,
    held_out_loss,
    image_pair_hash,
    iteration_generator,
    level_shapes,
    mix_pairs,
    split_validation,
    train,
    train_step,
    triplet_loss,
)
from engine.trunk_cache import bank_from_inputs, inputs_from_tensors, split_trunk

FEATURES = FeatureConfig(max_side=6, n_scales=1)  # 6x6 cells, 96 px: fast on a CPU
MINING = MiningConfig(n_proposals=16, top_k=1, verification_size=4, positive_square=4, n_negatives=4, min_vote_share=0.0)
SHAPES = level_shapes([(64, 64)] * 3, FEATURES)


def _images(n: int = 2) -> list[torch.Tensor]:
    """(3, 64, 64) uint8 textures; image 1 repeats image 0 shifted by 16 px."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(n + 1, 3, 11, 13, generator=g)
    big = (F.interpolate(small, size=(64, 80), mode="bicubic", align_corners=False).clamp(0, 1) * 255).byte()
    images = [big[0, :, :, :64].contiguous(), big[0, :, :, 16:].contiguous()]
    return images + [big[i, :, :, :64].contiguous() for i in range(2, n)]


def _config(**kw) -> TrainConfig:
    base = dict(steps=2, batch_pairs=32, checkpoint_every=1, lr=1e-3, mining=MINING, features=FEATURES)
    return TrainConfig(**(base | kw))


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _batch(anchor, positive, negatives, mask) -> PairBatch:
    anchor = torch.tensor(anchor)
    return PairBatch(anchor, torch.tensor(positive), torch.tensor(negatives), torch.tensor(mask),
                     torch.zeros(len(anchor), dtype=torch.long))


def _pairs(model, images) -> PairBatch:
    return mine_pairs(embed_collection(model, images, FEATURES), 0, MINING)


def test_triplet_loss_known_answer():
    s_pos = torch.tensor([0.9, 0.5])
    s_neg = torch.tensor([[0.1, 0.3], [0.5, 0.0]])
    # pair 1: -min(.8, .9) + (max(.1, .2) + max(.3, .2)) / 2 = -0.8 + 0.25
    # pair 2: -min(.8, .5) + (max(.5, .2) + max(.0, .2)) / 2 = -0.5 + 0.35
    loss = triplet_loss(s_pos, s_neg, torch.tensor([True, True]), lambda_=0.8)
    assert loss.item() == pytest.approx((-0.55 - 0.15) / 2)
    only_neg = triplet_loss(s_pos, s_neg, torch.tensor([True, False]), lambda_=0.8)
    assert only_neg.item() == pytest.approx((-0.55 + 0.35) / 2)
    weighted = triplet_loss(s_pos, s_neg, torch.tensor([True, True]), 0.8, torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx((3 * -0.55 + -0.15) / 4)


def test_triplet_loss_gradients_stop_at_the_margins():
    s_pos = torch.tensor([0.9, 0.5], requires_grad=True)
    s_neg = torch.tensor([[0.1, 0.3]], requires_grad=True).expand(2, 2)
    triplet_loss(s_pos, s_neg, torch.tensor([True, True])).backward()
    assert s_pos.grad.tolist() == pytest.approx([0.0, -0.5])  # above λ: already good enough


def test_config_round_trips_and_rejects_bad_values():
    config = _config(steps=7, minutes=1.5)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="expert_ratio"):
        TrainConfig(expert_ratio=1.5)
    with pytest.raises(ValueError, match="freeze"):
        TrainConfig(freeze="stem")
    with pytest.raises(ValueError, match="minutes"):
        TrainConfig(minutes=0)
    with pytest.raises(ValueError, match="validation_fraction"):
        TrainConfig(validation_fraction=1.0)
    with pytest.raises(ValueError, match="anchor_weight"):
        TrainConfig(anchor_weight=-0.1)
    with pytest.raises(ValueError, match="validate_every"):
        TrainConfig(validate_every=0)


def test_embed_collection_equals_feature_pyramids(random_effnet, monkeypatch):
    # The training bank runs float32 on CPUs (gradients); so must the pyramids compared.
    monkeypatch.setenv("ARTMINER_PRECISION", "fp32")
    images = _images(2)
    bank = embed_collection(random_effnet, images, FEATURES)
    rgb = [img.permute(1, 2, 0).numpy() for img in images]
    pyramids = list(extract_pyramids(random_effnet, rgb, FEATURES, [(64, 64)] * len(rgb)))
    for i, pyramid in enumerate(pyramids):
        assert torch.allclose(bank.levels[0][i], pyramid.levels[0], atol=1e-4)


def test_mix_pairs_keeps_the_expert_ratio():
    def batch(n, source):
        b = PairBatch.empty(2)
        z = torch.zeros(n, 4, dtype=torch.long)
        return PairBatch(z, z, torch.zeros(n, 2, 4, dtype=torch.long), torch.ones(n, dtype=torch.bool),
                         torch.full((n,), source) if n else b.source)
    config = _config(batch_pairs=10, expert_ratio=0.3)
    mixed = mix_pairs(batch(50, 0), batch(50, 1), config, iteration_generator(0, 0))
    assert len(mixed) == 10 and int(mixed.source.sum()) == 3
    few_mined = mix_pairs(batch(2, 0), batch(50, 1), config, iteration_generator(0, 0))
    assert len(few_mined) == 10 and int(few_mined.source.sum()) == 8


def test_mix_pairs_draws_whole_groups_to_touch_few_maps():
    image = torch.arange(16) // 4  # 4 groups of 4 pairs, each in its own pair of maps
    anchor = torch.stack([image, torch.zeros(16, dtype=torch.long), torch.arange(16), torch.zeros(16, dtype=torch.long)], 1)
    negatives = (anchor + torch.tensor([10, 0, 0, 0]))[:, None].expand(-1, 2, -1)
    mined = PairBatch(anchor, negatives[:, 0], negatives, torch.ones(16, dtype=torch.bool), torch.zeros(16, dtype=torch.long))
    mixed = mix_pairs(mined, None, _config(batch_pairs=8), iteration_generator(0, 1))
    assert len(mixed) == 8 and len(mixed.anchor[:, 0].unique()) == 2


BATCH = dict(
    anchor=[[0, 0, 2, 2], [1, 0, 5, 5], [1, 0, 3, 4]],
    positive=[[1, 0, 2, 1], [0, 0, 5, 4], [-1, -1, -1, -1]],
    negatives=[[[1, 0, 5, 5], [1, 0, 0, 0]], [[0, 0, 1, 1], [0, 0, 5, 2]], [[0, 0, 3, 3], [0, 0, 4, 4]]],
    mask=[True, True, False],
)


@pytest.mark.parametrize("cached", [False, True])
def test_two_pass_step_equals_one_pass(random_effnet, cached):
    images = _images(2)
    batch = _batch(**BATCH)
    grads, losses = [], []
    for chunk_maps in (8, 1):  # one chunk of both maps, then 2 chunks: the gradient-caching path
        model = copy.deepcopy(random_effnet)
        maps = CachedMaps(model, inputs_from_tensors(model, images, FEATURES)) if cached else PixelMaps(model, images)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        losses.append(train_step(maps, optimizer, batch, SHAPES, chunk_maps=chunk_maps))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5 * float(grads[0].abs().max()) + 1e-8)


def test_cached_step_equals_a_pixel_step_on_the_last_stage(random_effnet):
    """The frozen trunk is exact: the last stage gets the same gradient either way."""
    images, batch = _images(2), _batch(**BATCH)
    grads, losses = [], []
    for maps_of in (lambda m: PixelMaps(m, images), lambda m: CachedMaps(m, inputs_from_tensors(m, images, FEATURES))):
        model = copy.deepcopy(random_effnet)
        losses.append(train_step(maps_of(model), torch.optim.SGD(model.parameters(), lr=0.0), batch, SHAPES))
        grads.append(torch.cat([p.grad.flatten() for p in split_trunk(model)[1].parameters()]))
    assert losses[0] == pytest.approx(losses[1], abs=2e-3)  # inputs cached in half precision
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.998 and grads[0].abs().max() > 0


def test_train_step_rejects_cells_outside_the_maps(random_effnet):
    bad = _batch([[0, 0, 6, 0]], [[1, 0, 0, 0]], [[[1, 0, 1, 1]]], [True])  # row 6 of a 6x6 map
    maps = PixelMaps(random_effnet, _images(2))
    optimizer = torch.optim.SGD(random_effnet.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="outside image 0"):
        train_step(maps, optimizer, bad, SHAPES[:2])
    with pytest.raises(ValueError, match="outside the 2 images"):
        train_step(maps, optimizer, _batch([[5, 0, 0, 0]], [[1, 0, 0, 0]], [[[1, 0, 1, 1]]], [True]), SHAPES[:2])


def test_training_is_deterministic_and_a_killed_run_resumes(random_effnet, tmp_path):
    images = _images()
    pairs = _pairs(random_effnet, images)
    assert len(pairs) > 0, "mining found pairs to learn from"
    inputs = inputs_from_tensors(random_effnet, images, FEATURES)
    initial = _weights(random_effnet)
    straight = copy.deepcopy(random_effnet)
    after_two = {}

    def keep(log, total):
        if log.iteration == 1:
            after_two["w"] = _weights(straight).clone()
    full = train(straight, inputs, pairs, _config(steps=4), out_dir=tmp_path / "straight", progress=keep)
    assert sum(h.n_used_mined for h in full.history) > 0 and all(math.isfinite(h.loss) for h in full.history)
    killed = copy.deepcopy(random_effnet)
    train(killed, inputs, pairs, _config(steps=2), out_dir=tmp_path / "killed")
    assert torch.equal(_weights(killed), after_two["w"]) and not torch.equal(_weights(killed), initial)
    assert (tmp_path / "killed" / STATE_FILE).is_file()
    resumed_model = copy.deepcopy(random_effnet)
    resumed = train(resumed_model, inputs, pairs, _config(steps=4), out_dir=tmp_path / "killed")
    assert resumed.resumed_from == 2 and [h.iteration for h in resumed.history] == [0, 1, 2, 3]
    assert torch.equal(_weights(resumed_model), _weights(straight))
    assert resumed.model.parent == random_effnet.model_id
    assert torch.equal(_weights(load_checkpoint(resumed.model.checkpoint)), _weights(straight))


def test_frozen_trunk_trains_only_the_last_stage(random_effnet, tmp_path):
    images = _images()
    model = copy.deepcopy(random_effnet)
    prefix, last = (torch.cat([p.detach().flatten().clone() for p in m.parameters()]) for m in split_trunk(model))
    train(model, inputs_from_tensors(model, images, FEATURES), _pairs(model, images), _config(steps=2), out_dir=tmp_path)
    new_prefix, new_last = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in split_trunk(model))
    assert torch.equal(prefix, new_prefix) and not torch.equal(last, new_last)
    # A fully fine-tuned copy moves the prefix too.
    full = copy.deepcopy(random_effnet)
    train(full, images, _pairs(full, images), _config(steps=2, freeze="none"), out_dir=tmp_path / "full")
    assert not torch.equal(prefix, torch.cat([p.detach().flatten() for p in split_trunk(full)[0].parameters()]))


def test_time_budget_stops_the_round(random_effnet, tmp_path):
    images = _images()
    result = train(copy.deepcopy(random_effnet), inputs_from_tensors(random_effnet, images, FEATURES),
                   _pairs(random_effnet, images), _config(steps=50, minutes=1e-9), out_dir=tmp_path)
    assert result.stopped_by_time and result.iterations == 0


def test_resume_refuses_a_different_config(random_effnet, tmp_path):
    model, images = copy.deepcopy(random_effnet), _images()
    inputs, pairs = inputs_from_tensors(model, images, FEATURES), _pairs(model, images)
    train(model, inputs, pairs, _config(steps=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match="different config"):
        train(model, inputs, pairs, _config(steps=2, lr=1e-4), out_dir=tmp_path)


def test_train_refuses_a_single_image_or_the_wrong_source(random_effnet, tmp_path):
    images = _images()
    with pytest.raises(ValueError, match="at least 2 images"):
        train(random_effnet, images[:1], PairBatch.empty(4), _config(freeze="none"), out_dir=tmp_path)
    with pytest.raises(ValueError, match="trunk inputs"):
        train(random_effnet, images, PairBatch.empty(4), _config(), out_dir=tmp_path)


def test_cached_bank_equals_the_whole_backbone(random_effnet):
    images = _images(2)
    full = embed_collection(random_effnet, images, FEATURES)
    cached = bank_from_inputs(random_effnet, inputs_from_tensors(random_effnet, images, FEATURES))
    assert torch.allclose(full.levels[0], cached.levels[0], atol=2e-2)
    assert (full.levels[0] * cached.levels[0]).sum(1).min() > 0.999  # cosine of every cell


def test_images_may_be_float(random_effnet):
    images = _images(2)
    as_float = [img.float() / 255 for img in images]
    a = embed_collection(random_effnet, images, FEATURES).levels[0]
    b = embed_collection(random_effnet, as_float, FEATURES).levels[0]
    assert torch.allclose(a, b, atol=1e-5)
    assert np.isfinite(a.numpy()).all()


# ---------------------------------------------------------------- anchor and validation


def test_l2sp_gradient_is_alpha_times_the_drift():
    layer = torch.nn.Linear(2, 1)
    start = [p.detach().clone() for p in layer.parameters()]
    with torch.no_grad():
        layer.weight += torch.tensor([[0.5, -1.0]])
        layer.bias += 2.0
    anchor = L2SP(list(layer.parameters()), start, weight=0.1)
    anchor.add_grad()  # no loss gradient yet: the penalty's alone
    assert layer.weight.grad[0].tolist() == pytest.approx([0.05, -0.1])
    assert layer.bias.grad.tolist() == pytest.approx([0.2])
    assert anchor.distance() == pytest.approx(math.sqrt(0.25 + 1 + 4))
    with pytest.raises(ValueError, match="one for one"):
        L2SP(list(layer.parameters()), start[:1], weight=0.1)


def test_the_anchor_holds_the_weights_near_the_start(random_effnet, tmp_path):
    images = _images()
    inputs, pairs = inputs_from_tensors(random_effnet, images, FEATURES), _pairs(random_effnet, images)
    drift = {}
    for weight in (0.0, 1e3):
        model = copy.deepcopy(random_effnet)
        before = torch.cat([p.detach().flatten().clone() for p in split_trunk(model)[1].parameters()])
        train(model, inputs, pairs, _config(steps=6, anchor_weight=weight, validation_fraction=0.0),
              out_dir=tmp_path / str(weight))
        after = torch.cat([p.detach().flatten() for p in split_trunk(model)[1].parameters()])
        drift[weight] = float((after - before).norm())
    assert 0 < drift[1e3] < 0.5 * drift[0.0]


def _grouped_batch(n_image_pairs: int, per_pair: int) -> PairBatch:
    """``per_pair`` pairs between images (i, i + 100) for i < n_image_pairs."""
    image = torch.arange(n_image_pairs).repeat_interleave(per_pair)
    zero = torch.zeros_like(image)
    anchor = torch.stack([image, zero, zero, zero], 1)
    other = torch.stack([image + 100, zero, zero, zero], 1)
    return PairBatch(anchor, other, other[:, None].expand(-1, 2, -1).clone(), torch.ones(len(image), dtype=torch.bool),
                     torch.zeros(len(image), dtype=torch.long))


def test_split_validation_holds_out_whole_image_pairs_the_same_in_every_round():
    batch = _grouped_batch(200, 4)
    steps, held = split_validation(batch, _config(validation_fraction=0.2, validation_pairs=10_000))
    assert 0.1 < len(held) / len(batch) < 0.3 and len(held) % 4 == 0  # whole image pairs, about the fraction
    assert len(steps) + len(held) == len(batch)
    assert not set(held.anchor[:, 0].tolist()) & set(steps.anchor[:, 0].tolist())
    # another round's pairs between some of the same images: the same image pairs are held out
    later_steps, later = split_validation(batch.select(torch.arange(0, 800, 2)), _config(validation_fraction=0.2,
                                                                                         validation_pairs=10_000))
    assert set(later.anchor[:, 0].tolist()) == set(held.anchor[:, 0].tolist())
    # the cap: at most that many held out, and the rest of the held-out image pairs never train
    capped_steps, capped = split_validation(batch, _config(validation_fraction=0.2, validation_pairs=6))
    assert len(capped) == 6 and torch.equal(capped_steps.anchor, steps.anchor)
    none_steps, none = split_validation(batch, _config(validation_fraction=0.0))
    assert len(none) == 0 and len(none_steps) == 800


def test_image_pair_hash_is_fixed_and_spread():
    lo, hi = torch.arange(1000), torch.arange(1000) + 7
    h = image_pair_hash(lo, hi, seed=0)
    assert torch.equal(h, image_pair_hash(lo, hi, seed=0)) and not torch.equal(h, image_pair_hash(lo, hi, seed=1))
    assert ((h >= 0) & (h < 1)).all() and 0.15 < float((h < 0.2).double().mean()) < 0.25


def test_held_out_loss_is_the_step_loss_without_a_step(random_effnet):
    model = copy.deepcopy(random_effnet)
    maps = CachedMaps(model, inputs_from_tensors(model, _images(2), FEATURES))
    batch = _batch(**BATCH)
    before = _weights(model).clone()
    held = held_out_loss(maps, batch, SHAPES, chunk_maps=1)
    assert torch.equal(_weights(model), before)
    assert held == pytest.approx(train_step(maps, torch.optim.SGD(model.parameters(), lr=0.0), batch, SHAPES), abs=1e-5)
    with pytest.raises(ValueError, match="empty"):
        held_out_loss(maps, PairBatch.empty(2), SHAPES)


def _three_image_pairs(model):
    images = _images(3)
    images[2] = images[0].flip(-1).contiguous()  # a third image related to the first: more image pairs
    return images, _pairs(model, images)


def test_early_stopping_keeps_the_weights_of_the_best_validation(random_effnet, tmp_path):
    images, pairs = _three_image_pairs(random_effnet)
    inputs = inputs_from_tensors(random_effnet, images, FEATURES)
    model = copy.deepcopy(random_effnet)
    seen = {0: _weights(model).clone()}
    config = _config(steps=6, lr=5e-2, validation_fraction=0.5, validate_every=1)
    result = train(model, inputs, pairs, config, out_dir=tmp_path / "a",
                   progress=lambda log, _: seen.__setitem__(log.iteration + 1, _weights(model).clone()))
    steps = [s for s, _ in result.validation]
    assert steps == list(range(7)), "validated at the start and after every step"
    losses = dict(result.validation)
    assert result.best_step == min(losses, key=losses.get)
    assert torch.equal(_weights(model), seen[result.best_step])
    assert torch.equal(_weights(load_checkpoint(result.model.checkpoint)), seen[result.best_step])


def test_a_round_that_cannot_move_does_not_improve(random_effnet, tmp_path):
    images, pairs = _three_image_pairs(random_effnet)
    inputs = inputs_from_tensors(random_effnet, images, FEATURES)
    frozen = train(copy.deepcopy(random_effnet), inputs, pairs, _config(steps=2, lr=0.0, validation_fraction=0.5),
                   out_dir=tmp_path / "frozen")
    assert frozen.best_step == 0 and frozen.improved is False
    unvalidated = train(copy.deepcopy(random_effnet), inputs, pairs, _config(steps=2, validation_fraction=0.0),
                        out_dir=tmp_path / "none")
    assert unvalidated.best_step is None and unvalidated.improved is None and unvalidated.validation == ()


def test_a_killed_run_resumes_with_its_validation(random_effnet, tmp_path):
    images, pairs = _three_image_pairs(random_effnet)
    inputs = inputs_from_tensors(random_effnet, images, FEATURES)
    config = dict(lr=5e-2, validation_fraction=0.5, validate_every=1)
    straight_model = copy.deepcopy(random_effnet)
    straight = train(straight_model, inputs, pairs, _config(steps=4, **config), out_dir=tmp_path / "straight")
    killed = copy.deepcopy(random_effnet)
    train(killed, inputs, pairs, _config(steps=2, **config), out_dir=tmp_path / "killed")
    resumed_model = copy.deepcopy(random_effnet)
    resumed = train(resumed_model, inputs, pairs, _config(steps=4, **config), out_dir=tmp_path / "killed")
    assert resumed.validation == straight.validation and resumed.best_step == straight.best_step
    assert torch.equal(_weights(resumed_model), _weights(straight_model))
