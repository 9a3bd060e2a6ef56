"""Parameters sharded over a ``model`` mesh axis (FSDP, ``config.mesh.model``): a tiny ViT Barlow
Twins pre-training on a 2x4 (data, model) mesh of 8 simulated CPU devices follows the same losses and
reaches the same parameters as on today's 1-D 8-device data mesh, with its kernels and optimizer
state really sharded, and resumes from its checkpoint with that layout.

Tolerance: the two layouts reduce in another order (gradients reduce-scattered over ``model``,
matmuls on gathered parameters), so they agree to float32 round-off: losses to rtol 1e-5, parameters
after three LARS steps to atol 1e-6 + rtol 1e-5 (measured on CPU: 1.2e-7 at most).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl4eo_jax import sharding, train
from ssl4eo_jax.data import load_manifest, pipeline
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods import get_method
from ssl4eo_jax.optim import make_optimizer

from conftest import tiny_config

VIT = {"name": "vit_tiny", "patch_size": 8, "img_size": 32, "depth": 2, "pool": "token", "pos_embed": "learned",
       "weight_init": "xavier", "dtype": "float32"}
STEPS = 3


def vit_config(demo_dir: str, model: int = 1, **overrides) -> ml_collections.ConfigDict:
    config = tiny_config(demo_dir, **overrides)
    config.model = ml_collections.ConfigDict(VIT)
    config.mesh.model = model
    return config


def _train(demo_dir: str, model: int) -> tuple[list[float], dict]:
    config = vit_config(demo_dir, model)
    manifest = load_manifest(demo_dir)
    src = SplitSource(manifest, "train")
    mesh = sharding.config_mesh(config)
    method = get_method(config)
    tx, lr_fn = make_optimizer(config.optim, pipeline.steps_per_epoch(src, config.data.global_batch), 10,
                               method.param_groups())
    mean, std = manifest.band_stats()
    state = train.init_state(method, tx, config, manifest.num_bands, mesh)
    step_fn = train.make_train_step(method, tx, lr_fn, config, mean, std, mesh, state)
    it = pipeline.DeviceIterator(pipeline.train_dataset(src, config.data.global_batch, config.seed), mesh, workers=0)
    losses = []
    for _ in range(STEPS):
        state, metrics = step_fn(state, next(it))
        losses.append(float(metrics["loss"]))
    it.close()
    return losses, state


@pytest.fixture(scope="module")
def runs(demo_dir) -> dict[int, tuple[list[float], dict]]:
    return {model: _train(demo_dir, model) for model in (1, 4)}


def test_param_spec_shards_the_largest_divisible_dimension():
    assert sharding.param_spec((8, 8, 13, 192), 4) == P(None, None, None, "model")
    assert sharding.param_spec((192, 576), 4) == P(None, "model")
    assert sharding.param_spec((6, 6), 4) == P()  # nothing divisible: replicated
    assert sharding.param_spec((), 4) == P()
    assert sharding.param_spec((192, 576), 1) == P()


def test_a_2x4_mesh_gives_the_losses_and_parameters_of_1x8(runs):
    (one, state1), (two, state2) = runs[1], runs[4]
    print(f"\nlosses 1x8 {one}, 2x4 {two}")
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert one[0] != one[-1]  # it trained
    p1, p2 = (jax.tree.map(np.asarray, s["params"]) for s in (state1, state2))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
    print(f"largest parameter difference after {STEPS} steps: {worst:.2e}")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5), p1, p2)


def test_parameters_and_optimizer_state_are_sharded_over_model(runs):
    _, state = runs[4]
    fc1 = state["params"]["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]  # (192, 768)
    assert fc1.sharding.spec == P(None, "model")
    assert fc1.addressable_shards[0].data.shape == (192, 768 // 4)
    patch = state["params"]["encoder"]["patch_embed"]["kernel"]  # (8, 8, 13, 192)
    assert patch.sharding.spec == P(None, None, None, "model")
    moments = [x for x in jax.tree.leaves(state["opt"]) if x.shape == fc1.shape]
    assert moments and all(m.sharding.spec == P(None, "model") for m in moments)
    assert state["step"].sharding.spec == P()
    _, replicated = runs[1]
    assert replicated["params"]["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"].sharding.is_fully_replicated


def test_a_sharded_run_resumes_from_its_checkpoint_in_either_layout(demo_dir, tmp_path):
    """``train.run`` with ``config.mesh.model=4`` writes a sharded checkpoint at step 2; a longer run
    on the same mesh restores it into the sharded layout (orbax reads the target shardings from the
    state), and a replicated run (``mesh.model=1``) resumes the step-3 checkpoint too."""
    off = {"eval.enabled": False, "monitor.enabled": False, "evals.knn.every": 0, "train.tensorboard": False,
           "train.checkpoint_every": 1}
    workdir = str(tmp_path / "run")
    train.run(vit_config(demo_dir, 4, **off, **{"train.steps": 2}), workdir)
    resumed = train.run(vit_config(demo_dir, 4, **off, **{"train.steps": 3}), workdir)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 3
    replicated = train.run(vit_config(demo_dir, 1, **off, **{"train.steps": 4}), workdir)
    assert replicated["resumed_from"] == 3 and np.isfinite(replicated["final_metrics"]["loss"])

def test_a_model_axis_that_does_not_divide_the_devices_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config.mesh.model=3 does not divide the 8 devices"):
        sharding.make_mesh(model=3)
