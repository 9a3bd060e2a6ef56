"""LARS against a NumPy transcription of the reference PyTorch LARS; schedules."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssl4eo_jax import optim


def reference_lars_step(params, grads, mu, lr_w, lr_b, wd, momentum, eta):
    """The Barlow Twins repository's LARS.step() with exclude_bias_and_norm, in NumPy."""
    new_params, new_mu = {}, {}
    for name, p in params.items():
        dp = grads[name].copy()
        lr = lr_b if p.ndim == 1 else lr_w
        if p.ndim != 1:  # weight_decay_filter / lars_adaptation_filter exclude 1-D params
            dp = dp + wd * p
            param_norm, update_norm = np.linalg.norm(p), np.linalg.norm(dp)
            q = eta * param_norm / update_norm if (param_norm > 0 and update_norm > 0) else 1.0
            dp = dp * q
        new_mu[name] = momentum * mu[name] + dp
        new_params[name] = p - lr * new_mu[name]
    return new_params, new_mu


def test_lars_matches_reference_over_steps():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(5, 4)), "bias": rng.normal(size=(4,)), "zero": np.zeros((3, 3))}
    lr_w = lambda s: 0.1 * (1 + s)  # noqa: E731 - a changing lr exercises where the lr is applied
    lr_b = lambda s: 0.0048 * (1 + s)  # noqa: E731
    tx = optim.lars(lambda s: 0.1 * (1 + s), lambda s: 0.0048 * (1 + s), weight_decay=1e-2, momentum=0.9, eta=0.001)
    jparams = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(jparams)
    mu = {k: np.zeros_like(v) for k, v in params.items()}
    for step in range(5):
        grads = {k: rng.normal(size=v.shape) for k, v in params.items()}
        params, mu = reference_lars_step(params, grads, mu, lr_w(step), lr_b(step), 1e-2, 0.9, 0.001)
        updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads), state, jparams)
        jparams = optax.apply_updates(jparams, updates)
    for k in params:
        np.testing.assert_allclose(np.asarray(jparams[k]), params[k], rtol=2e-5, atol=1e-6)


def _cfg(**kw):
    base = dict(name="sgd", lr=1.0, momentum=0.9, weight_decay=0.0, schedule="cosine", warmup_epochs=0.0,
                per_epoch=False, end_lr_fraction=0.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_cosine_schedule_with_warmup():
    sched = optim.make_schedule(_cfg(warmup_epochs=2), 0.4, steps_per_epoch=10, total_steps=100)
    assert float(sched(0)) == 0.0  # the official warm-up (Barlow Twins, VICReg, BYOL): lr * step / warmup
    assert float(sched(10)) == pytest.approx(0.2)
    assert float(sched(19)) == pytest.approx(0.4 * 19 / 20)
    assert float(sched(20)) == pytest.approx(0.4)
    assert float(sched(60)) == pytest.approx(0.2, rel=1e-5)  # halfway through the cosine
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_per_epoch_and_step_schedules():
    per_epoch = optim.make_schedule(_cfg(per_epoch=True), 1.0, steps_per_epoch=10, total_steps=100)
    assert float(per_epoch(9)) == pytest.approx(1.0) and float(per_epoch(10)) < 1.0
    assert float(per_epoch(10)) == pytest.approx(float(per_epoch(19)))
    step = optim.make_schedule(_cfg(schedule="step", milestones=(6, 8), gamma=0.1), 1.0, 10, 100)
    assert [round(float(step(s)), 6) for s in (0, 59, 60, 80, 99)] == [1.0, 1.0, 0.1, 0.01, 0.01]


def test_unknown_optimizer_and_schedule_are_named():
    with pytest.raises(ValueError, match="adamx"):
        optim.make_optimizer(_cfg(name="adamx"), 10, 100)
    with pytest.raises(ValueError, match="linear"):
        optim.make_schedule(_cfg(schedule="linear"), 1.0, 10, 100)


def test_per_epoch_decay_keeps_a_per_step_warmup():
    """The demo presets warm MoCo and SwAV (per-epoch cosine) up: the ramp is per step, as SwAV's
    official per-iteration warm-up, and the cosine then steps once per epoch."""
    sched = optim.make_schedule(_cfg(warmup_epochs=1.5, per_epoch=True), 0.4, steps_per_epoch=10, total_steps=100)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(0.4 * 5 / 15)  # within the first epoch: still ramping
    assert float(sched(14)) == pytest.approx(0.4 * 14 / 15)
    assert float(sched(15)) == float(sched(19)) == pytest.approx(0.4)  # epoch 1 starts before the warm-up's end
    assert float(sched(20)) == float(sched(29)) < 0.4  # one value per epoch after it


def dino_cosine_scheduler(base_value, final_value, epochs, niter_per_ep):
    """facebookresearch/dino ``utils.cosine_scheduler`` without warm-up, literally."""
    iters = np.arange(epochs * niter_per_ep)
    return final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))


def test_weight_decay_schedule_is_dinos():
    cfg = ml_collections.ConfigDict({"weight_decay": 0.04, "weight_decay_end": 0.4})
    schedule = optim.weight_decay_schedule(cfg, total_steps=30)
    expected = dino_cosine_scheduler(0.04, 0.4, 3, 10)
    np.testing.assert_allclose([float(schedule(t)) for t in range(30)], expected, rtol=1e-5)
    assert optim.weight_decay_schedule(ml_collections.ConfigDict({"weight_decay": 0.1}), 30) == 0.1


@pytest.mark.parametrize("decay_1d", [False, True])
def test_adamw_decays_with_the_schedule_and_1d_parameters_on_request(decay_1d):
    """PyTorch AdamW's decoupled step ``w -= lr * wd_t * w`` (zero gradients leave only the decay),
    with DINO's weight-decay schedule; 1-D parameters decay only with ``weight_decay_1d``."""
    cfg = ml_collections.ConfigDict({"name": "adamw", "lr": 0.1, "weight_decay": 0.04, "weight_decay_end": 0.4,
                                     "schedule": "constant", "weight_decay_1d": decay_1d})
    tx, _ = optim.make_optimizer(cfg, steps_per_epoch=1.0, total_steps=4)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    state = tx.init(params)
    wd = optim.weight_decay_schedule(cfg, 4)
    for step in range(4):
        grads = jax.tree.map(jnp.zeros_like, params)
        updates, state = tx.update(grads, state, params)
        np.testing.assert_allclose(updates["kernel"], -0.1 * float(wd(step)) * params["kernel"], rtol=1e-5)
        np.testing.assert_allclose(updates["bias"], -0.1 * float(wd(step)) * params["bias"] if decay_1d else 0.0,
                                   rtol=1e-5)
        params = optax.apply_updates(params, updates)


def test_lars_refuses_a_weight_decay_schedule():
    cfg = ml_collections.ConfigDict({"name": "lars", "lr": 0.1, "weight_decay": 1e-6, "weight_decay_end": 1e-5,
                                     "momentum": 0.9, "eta": 0.001})
    with pytest.raises(optim.ConfigError, match="weight_decay_end"):
        optim.make_optimizer(cfg, 1.0, 4)


def test_a_group_frozen_for_the_run_never_moves():
    """MoCo v3's ``--stop-grad-conv1`` and fixed position embeddings (``requires_grad=False``): no
    update, no weight decay, whatever the gradient."""
    from ssl4eo_jax.methods.base import group_labels

    cfg = ml_collections.ConfigDict({"name": "adamw", "lr": 0.1, "weight_decay": 0.1, "schedule": "constant",
                                     "weight_decay_1d": True})
    groups = optim.ParamGroups(lambda p: group_labels(p, {"patch": "frozen"}),
                               {"frozen": optim.ParamGroup(frozen=True)})
    tx, _ = optim.make_optimizer(cfg, 1.0, 3, groups)
    params = {"patch": jnp.ones((2, 2)), "other": jnp.ones((2, 2))}
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(params["patch"], 1.0)
    assert np.all(np.asarray(params["other"]) < 1.0)
