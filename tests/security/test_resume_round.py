"""A training round killed with SIGKILL is resumed by the next identical one.

Found by `benchmarks/concurrency.py`: the stored parameters come back from JSON with
lists where the config has tuples, so no killed round ever matched and each rerun
started a new round (its checkpoints unused).
"""

from __future__ import annotations

from db import Store
from engine.train import TrainConfig
from engine.types import ModelRef
from hitl.rounds import RoundConfig, _resume_or_start


def test_a_killed_round_with_the_same_config_is_resumed() -> None:
    store = Store(":memory:")
    store.add_model(ModelRef("m", "effnet-lite0"))
    config = RoundConfig(sources=("mined", "expert"), train=TrainConfig(steps=3))
    first = _resume_or_start(store, "m", config)  # then the process is killed: still running
    assert _resume_or_start(store, "m", config) == first
    assert _resume_or_start(store, "m", RoundConfig(train=TrainConfig(steps=4))) != first
