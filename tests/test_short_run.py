"""The short-run rules (ssl4eo_jax/short_run.py): the values each derives for the demo job and the
benchmark's demo grid, the property each is meant to have, and that real-dataset presets keep the
reference's values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssl4eo_jax import short_run
from ssl4eo_jax.methods import METHODS
from ssl4eo_jax.methods.targets import momentum_at
from ssl4eo_jax.presets.files import load_config_module

DEMO = short_run.RunSize(train_size=4000, global_batch=256, total_steps=219)  # 14 epochs
GRID = short_run.RunSize(train_size=1000, global_batch=64, total_steps=31)  # configs/benchmark.py:demo


def _resolved(method: str, run: short_run.RunSize, arg: str | None = None) -> tuple[dict, list[str]]:
    config = load_config_module(method).get_config(arg)
    lines = short_run.resolve(config, run)
    return config, lines


def _kept_share(base: float, steps: int, schedule: str) -> float:
    """prod_t m_t over the steps a training run applies, with the method's own (float32) schedule."""
    t = np.arange(steps, dtype=np.int32)
    m = np.broadcast_to(np.asarray(momentum_at(t, base, steps, schedule), np.float64), t.shape)
    return float(np.exp(np.sum(np.log(m))))


@pytest.mark.parametrize("method,key,schedule,expected", [
    ("mocov2", "momentum", "constant", 0.986394),
    ("byol", "momentum", "cosine", 0.973005),
    ("dino", "momentum_teacher", "cosine", 0.973005),
    ("mocov3", "momentum", "cosine", 0.973005),
])
def test_momentum_network_forgets_its_initialisation_by_the_end_of_the_run(method, key, schedule, expected):
    config, lines = _resolved(method, DEMO)
    base = config[method][key]
    assert base == pytest.approx(expected, abs=1e-6)
    assert any(line.startswith(f"{method}.{key} = {base:g} ") for line in lines), lines
    # Independently of the rule's own arithmetic: the training schedule keeps e^-3 of the init.
    assert _kept_share(base, DEMO.total_steps, schedule) == pytest.approx(math.exp(-3.0), rel=2e-3)
    # A slightly larger momentum would keep more than that: the rule picks the largest.
    assert _kept_share(base + 1e-4, DEMO.total_steps, schedule) > math.exp(-3.0)


@pytest.mark.parametrize("method,key,reference,schedule", [
    ("mocov2", "momentum", 0.999, "constant"), ("byol", "momentum", 0.996, "cosine"),
    ("dino", "momentum_teacher", 0.996, "cosine"), ("mocov3", "momentum", 0.99, "cosine")])
def test_long_runs_keep_the_reference_momentum(method, key, reference, schedule):
    for steps in (3_000, 105_000):  # the rule's threshold (about 3 / (1 - m) steps), a 100-epoch BigEarthNet run
        config, _ = _resolved(method, short_run.RunSize(269_695, 256, steps))
        assert config[method][key] == reference
        assert _kept_share(reference, steps, schedule) <= math.exp(-3.0)
    config, _ = _resolved(method, GRID)  # 31 steps: far below the reference
    assert config[method][key] < 0.91


def test_demo_values_of_the_size_rules():
    config, _ = _resolved("mocov2", DEMO)
    assert config.optim.warmup_epochs == pytest.approx(0.1 * 219 / (4000 / 256))
    assert config.mocov2.queue_size == 768  # 3 batches <= 800 = 20 % of 4000
    assert config.mocov2.bn_group_size == 64  # the reference's per-GPU batch
    config, _ = _resolved("mocov2", GRID)
    assert config.mocov2.queue_size == 192 and config.mocov2.bn_group_size == 16
    config, _ = _resolved("swav", DEMO)
    assert config.swav.prototypes == 128
    assert config.swav.queue_length == 0  # 5 steps old > 1 % of the 186 steps after epoch 2.1
    assert config.swav.epoch_queue_starts == pytest.approx(0.15 * 219 / 15.625, abs=1e-4)
    assert config.swav.freeze_prototypes_niters == 2
    config, _ = _resolved("dino", DEMO)
    assert config.dino.freeze_last_layer == pytest.approx(2 / 15.625)


def test_values_set_on_the_command_line_are_kept():
    config = load_config_module("byol").get_config(None)
    config.byol.momentum = 0.99
    lines = short_run.resolve(config, DEMO)
    assert config.byol.momentum == 0.99
    assert not any(line.startswith("byol.momentum") for line in lines)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_real_dataset_presets_resolve_nothing(method):
    config, lines = _resolved(method, short_run.RunSize(269_695, 256, 105_300), "bigearthnet")
    assert lines == [] and short_run.unresolved(config) == []


def test_unknown_momentum_schedule_names_the_key():
    config = load_config_module("mocov2").get_config(None)
    config.mocov2.momentum_schedule = "linear"
    with pytest.raises(short_run.ConfigError, match=r"config\.mocov2\.momentum_schedule='linear'"):
        short_run.resolve(config, DEMO)
