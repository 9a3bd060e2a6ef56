"""Named random streams (``ssl4eo_jax/rng.py``): one key per purpose, no collisions, and one
random-init encoder per seed for every method and for ``evaluate``'s ``checkpoint=random``."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl4eo_jax import augment, rng, train
from ssl4eo_jax.data import load_manifest
from ssl4eo_jax.evaluate import load_target_encoder
from ssl4eo_jax.methods import METHODS, TrainLength, get_method
from ssl4eo_jax.methods.base import method_key
from tests.test_methods import method_config


def _bits(key: jax.Array) -> tuple[int, ...]:
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_streams_are_distinct_deterministic_and_named():
    keys = {name: _bits(rng.stream(0, name)) for name in rng.STREAMS}
    assert len(set(keys.values())) == len(keys)  # no two purposes share a key
    assert keys == {name: _bits(rng.stream(0, name)) for name in rng.STREAMS}  # pure functions of the seed
    assert _bits(rng.stream(1, "augment")) != keys["augment"]
    # The seed's own key and its step keys are none of the streams (the old fold_in(seed, 0|1|step) ids).
    base = jax.random.key(0)
    plain = {_bits(jax.random.fold_in(base, i)) for i in range(64)} | {_bits(base)}
    assert not plain & set(keys.values())
    assert rng.name_id("augment") == rng.name_id("augment") and 0 <= rng.name_id("augment") < 2**31
    with pytest.raises(ValueError, match="Unknown random stream 'augmnet'"):
        rng.stream(0, "augmnet")
    with pytest.raises(ValueError, match="Unknown random stream"):
        rng.derive(base, "queue")


def test_augmentation_ops_are_keyed_by_name_not_position():
    ids = augment.OP_IDS
    assert len(set(ids.values())) == len(ids)
    assert ids["crop"] == rng.name_id("augment/crop") and ids["band_drop"] == rng.name_id("augment/band_drop")


def test_method_keys_differ_per_step_and_from_the_other_streams():
    keys = [_bits(method_key(0, jnp.int32(s))) for s in range(8)]
    assert len(set(keys)) == 8
    assert not set(keys) & {_bits(jax.random.fold_in(rng.stream(0, "augment"), s)) for s in range(8)}


def test_every_method_and_evaluate_start_from_one_encoder_per_seed(demo_dir):
    """For one seed and one ``config.model``, the random-init baseline is the same encoder for every
    method and for ``evaluate.py``'s ``checkpoint=random`` (issue 16: before, each method's network
    tree gave its own weights). Methods whose configs differ in the model (SimSiam's zero-init
    residual BN) get the weights of that model from the same key."""
    manifest = load_manifest(demo_dir)
    by_model: dict[str, dict[str, tuple]] = {}
    for name in METHODS:
        config = method_config(name, demo_dir)
        method = get_method(config, TrainLength(10.0, 100))
        variables, _ = jax.jit(lambda: train.init_variables(method, config, manifest.num_bands))()
        model = repr(sorted(config.model.to_dict().items()))
        if model not in by_model:
            eval_cfg = ml_collections.ConfigDict({"checkpoint": "random", "seed": config.seed,
                                                  "model": config.model.to_dict(), "train": {"aug": {"crop_size": 48}}, "eval": {}})
            evaluated = load_target_encoder(eval_cfg, manifest).variables
            by_model[model] = {"evaluate": (evaluated["params"], evaluated["batch_stats"])}
        by_model[model][name] = (variables["params"]["encoder"], variables["batch_stats"]["encoder"])
    assert sum(len(group) - 1 for group in by_model.values()) == len(METHODS)
    assert max(len(group) for group in by_model.values()) >= 6  # most methods share the default model
    for group in by_model.values():
        for (a, ea), (b, eb) in itertools.combinations(group.items(), 2):
            jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y, err_msg=f"{a} vs {b}"), ea, eb)
    # The same key for another model: the same draws where the layers agree (conv1).
    kernels = [group["evaluate"][0]["conv1"]["kernel"] for group in by_model.values() if "conv1" in group["evaluate"][0]]
    for k in kernels[1:]:
        np.testing.assert_array_equal(k, kernels[0])
    # Another seed, another encoder.
    eval_cfg = ml_collections.ConfigDict({"checkpoint": "random", "seed": config.seed + 1,
                                          "model": config.model.to_dict(), "train": {"aug": {"crop_size": 48}}, "eval": {}})
    other = load_target_encoder(eval_cfg, manifest).variables
    assert not np.array_equal(other["params"]["conv1"]["kernel"], kernels[0])
