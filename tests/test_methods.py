"""The SSL methods: each trains on 8 simulated devices; their pieces against exact expectations.

Training tests alternate two fixed batches of the tiny demo data with light photometric
augmentation and a constant learning rate, so that a short run shows learning: with two batches a
queue one or two batches long never holds a stale key of the query's own image except its own
batch's previous view (MoCo's queue is one batch: only the other batch), and losses are compared as
means over 4 steps. Compiled steps are shared between tests through ``_trainer``'s cache.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl4eo_jax import losses, sharding, train
from ssl4eo_jax.data import load_manifest, pipeline
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods import METHODS, TrainLength, get_method
from ssl4eo_jax.methods.base import (
    effective_rank,
    embedding_metrics,
    evaluated_encoder,
    evaluated_network,
    group_labels,
)
from ssl4eo_jax.methods.dino import teacher_temperature
from ssl4eo_jax.methods.mocov2 import enqueue
from ssl4eo_jax.methods.nets import forward_grouped, forward_joint
from ssl4eo_jax.methods.swav import normalize_prototypes, push_queue
from ssl4eo_jax.methods.targets import cosine_momentum, ema, momentum_at
from ssl4eo_jax.models.batchnorm import BatchNorm
from ssl4eo_jax.models.resnet import BN_EPSILON
from ssl4eo_jax.models.vit import is_vit
from ssl4eo_jax.optim import ParamGroup, ParamGroups, make_optimizer
from ssl4eo_jax.presets.files import configs_dir, load_config_module

BATCH, STEPS = 32, 16  # each configs/<method>.py's TINY settings assume these


def method_config(name: str, data_dir: str, arg: str = "demo", **overrides):
    """``configs/<name>.py:<arg>`` at toy scale: 32 px crops, ResNet-18 of width 16 (ViTs: the
    config's TINY depth), and the config's own ``TINY`` settings (small heads) and
    ``TINY_LR_FACTOR`` (a constant lr that learns in 16 steps)."""
    module = load_config_module(name)
    config = module.get_config(arg)
    config.data.dir = data_dir
    config.data.global_batch = BATCH
    config.data.workers = 0
    config.aug.crop_size = 32
    config.aug.crop.scale = (0.5, 1.0)
    config.aug.ops = tuple(op for op in config.aug.ops if op not in ("band_drop", "grayscale", "brightness_contrast"))
    if is_vit(config.model.name):
        config.model.depth = 2
    else:
        config.model.width = 16
    config.train.steps = STEPS
    config.optim.warmup_epochs = 0.0
    config.optim.schedule = "constant"
    config.optim.base_lr = config.optim.base_lr * module.TINY_LR_FACTOR
    if "base_lr_biases" in config.optim:
        config.optim.base_lr_biases = config.optim.base_lr_biases * module.TINY_LR_FACTOR
    for key, value in {**module.TINY, **overrides}.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


class Trainer:
    """A method's jitted train step on a mesh, with fixed device batches of the demo data."""

    def __init__(self, config, data_dir: str, n_devices: int, n_batches: int = 2):
        manifest = load_manifest(data_dir)
        src = SplitSource(manifest, "train")
        spe = pipeline.steps_per_epoch(src, BATCH)
        self.mesh = sharding.make_mesh(jax.devices()[:n_devices])
        self.method = get_method(config, TrainLength(spe, config.train.steps), self.mesh)
        tx, lr_fn = make_optimizer(config.optim, spe, config.train.steps, self.method.param_groups())
        mean, std = manifest.band_stats()
        self.init = lambda: train.init_state(self.method, tx, config, manifest.num_bands, self.mesh)
        self.step = train.make_train_step(self.method, tx, lr_fn, config, mean, std, self.mesh)
        it = pipeline.DeviceIterator(pipeline.train_dataset(src, BATCH, config.seed), self.mesh, workers=0)
        self.batches = [next(it) for _ in range(n_batches)]
        it.close()

    def run(self, steps: int, observe=None) -> tuple[list[float], list[dict], dict]:
        """Trains ``steps`` steps cycling through the batches; ``observe(state)`` after each step."""
        state, losses, metrics = self.init(), [], []
        for i in range(steps):
            state, m = self.step(state, self.batches[i % len(self.batches)])
            losses.append(float(m["loss"]))
            metrics.append({k: float(v) for k, v in m.items()})
            if observe is not None:
                observe(state)
        return losses, metrics, state


@functools.cache
def _trainer(name: str, data_dir: str, n_devices: int = 8, n_batches: int = 2, arg: str = "demo", **overrides
             ) -> Trainer:
    return Trainer(method_config(name, data_dir, arg, **overrides), data_dir, n_devices, n_batches)


# ----------------------------------------------------------------------------- every method trains

# Every method with its default encoder, and DINO with its ViT recipe (configs/dino.py:demo,arch=vit).
RECIPES = [(name, "demo") for name in sorted(METHODS)] + [("dino", "demo,arch=vit")]


@pytest.mark.parametrize("name,arg", RECIPES)
def test_method_trains_on_eight_devices(demo_dir, name, arg, tmp_path):
    losses, metrics, state = _trainer(name, demo_dir, arg=arg).run(STEPS)
    # The whole state, extra state included (SwAV here without a queue), goes through a checkpoint.
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "state", state)
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "state", state)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
    assert np.all(np.isfinite(losses)), losses
    # Step 0 of MoCo sees a queue of random vectors. DINO's loss is its targets' entropy plus the
    # student's KL divergence to them (losses.dino_teacher_entropy; the DINO paper's Fig. 7):
    # centring spreads the targets in these steps by design (entropy 1.2 -> 2.8 here), so what the
    # student learns shows in the KL, not the loss.
    trend = [m["kl"] for m in metrics] if name == "dino" else losses
    early, late = np.mean(trend[1:5]), np.mean(trend[-4:])
    assert late < early, f"{name}: {'KL' if name == 'dino' else 'loss'} did not decrease: {np.round(trend, 4)}"
    last = metrics[-1]
    if name == "mae":  # no embedding: 75 % of the patches masked, and the pixel error falls
        assert last["mask_ratio"] == 0.75 and last["pixel_mse"] < metrics[0]["pixel_mse"]
    else:
        assert 0 < last["embedding_std"] < 1 and 1 <= last["effective_rank"] <= BATCH
    enc = state["params"]["encoder"]
    if is_vit(load_config_module(name).get_config(arg).model.name):  # the evaluators' convention
        assert "patch_embed" in enc and state["batch_stats"]["encoder"] == {}
    else:
        assert "conv1" in enc and "bn1" in state["batch_stats"]["encoder"]


def test_registry_names_match_the_configs():
    """Every method the registry discovers (``methods.discover_methods``) has a configs/<name>.py
    with its TINY test settings, and every pre-training config a method."""
    files = {f[:-3] for f in os.listdir(configs_dir()) if f.endswith(".py")} - {"benchmark"}
    assert files == set(METHODS)
    for name in METHODS:
        config = load_config_module(name).get_config("bigearthnet")
        assert config.method == name and name in config
        assert load_config_module(name).__doc__.count("python -m ssl4eo_jax.main") >= 1
        module = load_config_module(name)  # the toy-scale settings the tests take from the config
        assert isinstance(module.TINY, dict) and module.TINY_LR_FACTOR > 0
        assert all(key.split(".")[0] in config for key in module.TINY), module.TINY


# ----------------------------------------------------------------------------- 1 vs 8 devices


def test_moco_without_shuffle_bn_gives_the_same_losses_on_one_and_eight_devices(demo_dir):
    """Plain BN (``shuffle_bn=False``); shuffle-BN and every other method's default are checked
    through the command line by tests/test_device_invariance.py, and MoCo's whole state by
    tests/test_official_steps_contrastive.py."""
    runs = [_trainer("mocov2", demo_dir, n, 3, **{"mocov2.shuffle_bn": False}).run(2)[0] for n in (1, 8)]
    # Steps 1 and 2; later steps drift with float32 rounding, which training amplifies (issue 12).
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


# ----------------------------------------------------------------------------- MoCo


def test_enqueue_writes_the_global_batch_in_order_and_wraps():
    queue = jnp.zeros((6, 2))
    keys = [jnp.arange(4.0).reshape(2, 2) + 10 * i for i in range(4)]
    ptr = jnp.zeros((), jnp.int32)
    queue, ptr = enqueue(queue, ptr, keys[0])
    queue, ptr = enqueue(queue, ptr, keys[1])
    assert int(ptr) == 4
    np.testing.assert_array_equal(queue[:4], jnp.concatenate(keys[:2]))
    queue, ptr = enqueue(queue, ptr, keys[2])
    assert int(ptr) == 0  # wrapped
    queue, ptr = enqueue(queue, ptr, keys[3])
    np.testing.assert_array_equal(queue, jnp.concatenate([keys[3], keys[1], keys[2]]))
    assert int(ptr) == 2


def test_moco_queue_holds_the_keys_of_the_whole_global_batch(demo_dir):
    trainer = _trainer("mocov2", demo_dir)
    state = trainer.init()
    queue0 = np.asarray(state["extra"]["queue"])
    np.testing.assert_allclose(np.linalg.norm(queue0, axis=1), 1.0, rtol=1e-5)  # random unit vectors
    state, _ = trainer.step(state, trainer.batches[0])
    queue = np.asarray(state["extra"]["queue"])
    assert int(state["extra"]["queue_ptr"]) == 0  # K = one global batch: the pointer wrapped
    assert not np.allclose(queue, queue0)
    np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-5)
    # 32 distinct keys: every device's examples, not 8 copies of one device's 4.
    assert len(np.unique(np.round(queue, 5), axis=0)) == BATCH


def test_moco_queue_must_be_a_multiple_of_the_global_batch(demo_dir):
    with pytest.raises(ConfigError, match="queue_size=48 must be a positive multiple of the global batch"):
        get_method(method_config("mocov2", demo_dir, **{"mocov2.queue_size": 48}), TrainLength(3.0, STEPS))


class _BN(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
        return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON)(x)


def test_grouped_batchnorm_uses_each_group_statistics_on_any_device_count():
    x = jax.random.normal(jax.random.key(0), (32, 3)) * jnp.arange(1.0, 33.0)[:, None]  # group-dependent scale
    net = _BN()
    variables = net.init(jax.random.key(1), x)

    def grouped(n_devices, group_size):
        mesh = sharding.make_mesh(jax.devices()[:n_devices])
        xs = jax.device_put(x, NamedSharding(mesh, P(sharding.DATA_AXIS)))
        return jax.jit(lambda v, a: forward_grouped(net, v["params"], v["batch_stats"], a, group_size))(variables, xs)

    def standardise(a):
        return (a - a.mean(0)) / np.sqrt(a.var(0) + BN_EPSILON)

    chunks = np.split(np.asarray(x), 4)
    expected = np.concatenate([standardise(c) for c in chunks])
    for n_devices in (1, 2, 8):  # 4 groups of 8 whatever the devices
        out, stats = grouped(n_devices, 8)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
        # Running statistics: the mean over groups of each group's PyTorch update (unbiased variance).
        np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], 0.1 * np.asarray(x).mean(0), rtol=1e-4, atol=1e-6)
        var = np.mean([0.9 + 0.1 * c.var(0, ddof=1) for c in chunks], axis=0)
        np.testing.assert_allclose(stats["BatchNorm_0"]["var"], var, rtol=1e-4)
    assert not np.allclose(expected, standardise(np.asarray(x)), atol=1e-2)  # differs from global BN
    out, _ = grouped(8, 32)
    np.testing.assert_allclose(out, standardise(np.asarray(x)), rtol=1e-4, atol=1e-5)  # one group: plain BN


# ----------------------------------------------------------------------------- EMA targets


def test_ema_and_momentum_schedules():
    target, online = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])}
    np.testing.assert_allclose(ema(target, online, 0.9)["w"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2], rtol=1e-6)
    # BYOL/DINO: 1 - (1 - 0.996)(cos(pi k / K) + 1) / 2.
    for k, expected in [(0, 0.996), (50, 0.998), (100, 1.0), (150, 1.0), (25, 1 - 0.004 * (np.cos(np.pi / 4) + 1) / 2)]:
        assert float(cosine_momentum(k, 0.996, 100)) == pytest.approx(expected, abs=1e-7)
    assert float(momentum_at(70, 0.999, 100, "constant")) == pytest.approx(0.999)
    with pytest.raises(ConfigError, match="linear"):
        momentum_at(0, 0.9, 10, "linear")


def test_byol_target_is_the_ema_of_the_online_network(demo_dir):
    trainer = _trainer("byol", demo_dir)
    state = trainer.init()
    before_target = jax.tree.map(np.asarray, state["extra"]["target_params"])
    assert "predictor" not in before_target
    state, metrics = trainer.step(state, trainer.batches[0])
    tau = float(cosine_momentum(0, 0.996, STEPS))
    assert float(metrics["momentum"]) == pytest.approx(tau)
    online = {k: v for k, v in state["params"].items() if k != "predictor"}
    expected = jax.tree.map(lambda t, o: tau * t + (1 - tau) * np.asarray(o), before_target, online)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state["extra"]["target_params"],
                 expected)


# ----------------------------------------------------------------------------- SwAV


def test_swav_prototypes_normalised_and_frozen_then_trained(demo_dir):
    trainer = _trainer("swav", demo_dir)
    snapshots = []
    trainer.run(5, observe=lambda s: snapshots.append(np.asarray(s["params"]["prototypes"]["kernel"])))
    init = np.asarray(trainer.init()["params"]["prototypes"]["kernel"])
    np.testing.assert_allclose(np.linalg.norm(init, axis=0), 1.0, rtol=1e-6)
    for frozen in snapshots[:3]:  # freeze_prototypes_niters = 3
        np.testing.assert_array_equal(frozen, init)
    for trained in snapshots[3:]:
        assert np.abs(trained - init).max() > 1e-4
        np.testing.assert_allclose(np.linalg.norm(trained, axis=0), 1.0, rtol=1e-5)


def test_swav_queue_starts_on_time_and_is_used_only_when_full(demo_dir):
    """Queue of 2 batches from step 1 (epoch 1/3 of 3 steps): nothing is enqueued before; the
    batch's projections go in front; the codes use the queue's scores only once it is full."""
    config = method_config("swav", demo_dir, **{"swav.queue_length": 2 * BATCH, "swav.epoch_queue_starts": 1 / 3})
    method = get_method(config, TrainLength(3.0, STEPS))
    variables, extra = jax.jit(method.init)(jax.random.key(0), jnp.zeros((2, 32, 32, 13)))
    params, batch_stats = variables["params"], variables["batch_stats"]
    views = [jax.random.normal(k, (BATCH, 32, 32, 13)) for k in jax.random.split(jax.random.key(1), 2)]
    queue = np.asarray(jax.random.normal(jax.random.key(2), (2, 2 * BATCH, 32)))
    outs, _ = forward_joint(method.net, params, batch_stats, views)
    scores, zs = [s for _, _, s in outs], [z for _, z, _ in outs]
    protos = params["prototypes"]["kernel"]
    args = (0.1, 0.05, 3, 2)
    loss_fn = jax.jit(method.loss)

    def run(filled, step):
        return loss_fn(params, batch_stats, {"queue": jnp.asarray(queue), "queue_filled": jnp.asarray(filled, jnp.int32)},
                       views, jnp.asarray(step), jax.random.key(0))

    loss, (_, new, m) = run(0, 0)  # before the start: no queue use, nothing enqueued
    np.testing.assert_allclose(loss, losses.swav(scores, *args), rtol=1e-5)
    np.testing.assert_array_equal(new["queue"], queue)
    assert int(new["queue_filled"]) == 0 and float(m["queue_used"]) == 0.0
    loss, (_, new, m) = run(BATCH, 1)  # half full: not used, the batch goes in front
    np.testing.assert_allclose(loss, losses.swav(scores, *args), rtol=1e-5)
    np.testing.assert_allclose(new["queue"][:, :BATCH], np.stack([zs[0], zs[1]]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(new["queue"][:, BATCH:], queue[:, :BATCH])
    assert int(new["queue_filled"]) == 2 * BATCH and float(m["queue_used"]) == 0.0
    loss, (_, new, m) = run(2 * BATCH, 2)  # full: its scores join the codes' Sinkhorn
    expected = losses.swav(scores, *args, queue_scores=[queue[i] @ protos for i in range(2)])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert float(m["queue_used"]) == 1.0 and int(new["queue_filled"]) == 2 * BATCH
    assert abs(float(expected) - float(losses.swav(scores, *args))) > 1e-4  # the queue mattered


def test_swav_queue_shift_and_prototype_normalisation():
    queue = jnp.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(push_queue(queue, jnp.array([[10.0, 11.0]])), [[10, 11], [0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(push_queue(jnp.zeros((1, 2)), jnp.ones((3, 2))), [[1, 1]])
    params = normalize_prototypes({"prototypes": {"kernel": jnp.array([[3.0, 0.0], [4.0, 2.0]])}, "x": 1})
    np.testing.assert_allclose(params["prototypes"]["kernel"], [[0.6, 0.0], [0.8, 1.0]])
    assert params["x"] == 1


# ----------------------------------------------------------------------------- DINO


def test_dino_teacher_temperature_schedule():
    warm, final, epochs = 0.04, 0.07, 30
    official = np.concatenate([np.linspace(warm, final, epochs), np.ones(70) * final])
    spe = 3.5
    for step in [0, 3, 4, 50, 101, 104, 105, 300]:
        epoch = int(np.floor(step / spe))
        got = float(teacher_temperature(step, spe, warm, final, epochs))
        assert got == pytest.approx(official[epoch], rel=1e-6)
    assert float(teacher_temperature(7, 1.0, 0.04, 0.04, 0)) == pytest.approx(0.04)
    assert float(teacher_temperature(0, 1.0, 0.02, 0.04, 1)) == pytest.approx(0.02)  # linspace(a, b, 1) = [a]


def test_dino_centre_moves_towards_the_teacher_mean(demo_dir):
    """After one loss, centre = 0.9 * 0 + 0.1 * mean of the teacher's logits over both global crops
    (computed here by one plain forward of the two crops concatenated: the same BN batch)."""
    trainer = _trainer("dino", demo_dir)
    state, method = trainer.init(), trainer.method
    keys = jax.random.split(jax.random.key(3), 4)
    views = [jax.random.normal(keys[0], (BATCH, 32, 32, 13)), jax.random.normal(keys[1], (BATCH, 32, 32, 13)),
             jax.random.normal(keys[2], (BATCH, 13, 13, 13)), jax.random.normal(keys[3], (BATCH, 13, 13, 13))]
    extra = state["extra"]
    np.testing.assert_array_equal(extra["center"], 0.0)
    _, (_, new_extra, metrics) = jax.jit(method.loss)(state["params"], state["batch_stats"], extra, views,
                                                      jnp.asarray(0), jax.random.key(0))
    teacher = {"params": extra["teacher_params"], "batch_stats": extra["teacher_batch_stats"]}
    (_, (_, logits), _), _ = method.net.apply(teacher, jnp.concatenate(views[:2]), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(new_extra["center"], 0.1 * np.asarray(logits).mean(0), rtol=1e-4, atol=1e-6)
    assert float(metrics["teacher_temp"]) == pytest.approx(0.04)


@pytest.mark.parametrize("name", ["dino", "byol", "mocov2"])
def test_the_evaluated_encoder_is_the_network_the_official_code_evaluates(demo_dir, name):
    """DINO's teacher (dino eval_knn.py / eval_linear.py ``--checkpoint_key teacher``), BYOL's online
    network, MoCo's ``encoder_q``: evaluation, the kNN monitor and export read this one."""
    state = _trainer(name, demo_dir).init()
    moved = {**state, "extra": jax.tree.map(lambda x: x + 1.0, state["extra"])}  # target/teacher/key != online
    got = evaluated_encoder(moved, name)
    if name == "dino":
        assert evaluated_network(name) == "teacher"
        want = moved["extra"]["teacher_params"]["encoder"]["conv1"]["kernel"]
        want_stats = moved["extra"]["teacher_batch_stats"]["encoder"]["bn1"]["mean"]
    else:
        assert evaluated_network(name) == "online"
        want = state["params"]["encoder"]["conv1"]["kernel"]
        want_stats = state["batch_stats"]["encoder"]["bn1"]["mean"]
    np.testing.assert_array_equal(got["params"]["conv1"]["kernel"], want)
    np.testing.assert_array_equal(got["batch_stats"]["bn1"]["mean"], want_stats)
    # At initialisation (variables without extra state) every method reads its online encoder.
    init_only = {"params": state["params"], "batch_stats": state["batch_stats"]}
    np.testing.assert_array_equal(evaluated_encoder(init_only, name)["params"]["conv1"]["kernel"],
                                  state["params"]["encoder"]["conv1"]["kernel"])


# ----------------------------------------------------------------------------- optimizer groups


def _sgd_cfg(**kw):
    import ml_collections

    base = dict(name="sgd", lr=0.5, momentum=0.0, weight_decay=0.0, schedule="cosine", warmup_epochs=0.0,
                per_epoch=False, end_lr_fraction=0.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _apply(tx, params, grads_per_step):
    state = tx.init(params)
    history = []
    for grads in grads_per_step:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(jax.tree.map(np.asarray, updates))
    return params, history


def test_constant_lr_group_keeps_the_base_lr():
    """SimSiam's fix_pred_lr: the predictor's step is -lr_base * g at every step, the rest follows
    the cosine."""
    params = {"encoder": {"k": jnp.ones((2, 2))}, "predictor": {"k": jnp.ones((2, 2))}}
    groups = ParamGroups(lambda p: group_labels(p, {"predictor": "predictor"}), {"predictor": ParamGroup(constant_lr=True)})
    tx, lr_fn = make_optimizer(_sgd_cfg(), steps_per_epoch=1.0, total_steps=4, groups=groups)
    grads = {"encoder": {"k": jnp.full((2, 2), 2.0)}, "predictor": {"k": jnp.full((2, 2), 2.0)}}
    _, history = _apply(tx, params, [grads] * 4)
    for step, updates in enumerate(history):
        np.testing.assert_allclose(updates["predictor"]["k"], -0.5 * 2.0, rtol=1e-6)
        np.testing.assert_allclose(updates["encoder"]["k"], -float(lr_fn(step)) * 2.0, rtol=1e-6)
    assert float(lr_fn(3)) < 0.5


def test_frozen_group_gets_no_update_no_decay_no_momentum_then_resumes_on_schedule():
    params = {"encoder": {"k": jnp.ones((2,))}, "prototypes": {"k": jnp.full((2,), 3.0)}}
    groups = ParamGroups(lambda p: group_labels(p, {"prototypes": "prototypes"}),
                         {"prototypes": ParamGroup(frozen_steps=2)})
    cfg = _sgd_cfg(momentum=0.9, weight_decay=0.1)
    tx, lr_fn = make_optimizer(cfg, steps_per_epoch=1.0, total_steps=5, groups=groups)
    g = {"encoder": {"k": jnp.ones((2,))}, "prototypes": {"k": jnp.ones((2,))}}
    _, history = _apply(tx, params, [g] * 4)
    for updates in history[:2]:
        np.testing.assert_array_equal(updates["prototypes"]["k"], 0.0)
    # Step 2: the first real step, as PyTorch SGD's first step with a fresh momentum buffer, at lr(2).
    d = 1.0 + 0.1 * 3.0
    np.testing.assert_allclose(history[2]["prototypes"]["k"], -float(lr_fn(2)) * d, rtol=1e-6)
    p3 = 3.0 - float(lr_fn(2)) * d
    np.testing.assert_allclose(history[3]["prototypes"]["k"], -float(lr_fn(3)) * (0.9 * d + 1.0 + 0.1 * p3), rtol=1e-5)
    # The encoder trains from step 0 with momentum.
    assert float(np.abs(history[0]["encoder"]["k"]).min()) > 0


def test_group_labels_by_path_prefix():
    params = {"projector": {"mlp": {"k": 1}, "last_layer": {"kernel": 2}}, "encoder": {"k": 3}}
    assert group_labels(params, {"projector/last_layer": "last"}) == {
        "projector": {"mlp": {"k": "default"}, "last_layer": {"kernel": "last"}}, "encoder": {"k": "default"}}


def test_per_parameter_gradient_clipping():
    tx, _ = make_optimizer(_sgd_cfg(lr=1.0, schedule="constant", clip_grad=3.0), 1.0, 10)
    params = {"a": jnp.zeros((2,)), "b": jnp.zeros((2,))}
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["a"], -np.array([3.0, 4.0]) * 3.0 / (5.0 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(updates["b"], -np.array([0.3, 0.4]), rtol=1e-6)  # under the limit: unchanged


# ----------------------------------------------------------------------------- collapse metrics


def test_effective_rank_on_known_spectra():
    rng = np.random.default_rng(0)
    n, d = 64, 16

    def with_spectrum(s):
        u = rng.normal(size=(n, len(s)))
        u, _ = np.linalg.qr(u - u.mean(0))  # orthonormal, centred columns: centring keeps the spectrum
        v, _ = np.linalg.qr(rng.normal(size=(d, len(s))))
        return (u * np.asarray(s)) @ v.T

    for k in (1, 3, 8, 16):
        assert float(effective_rank(jnp.asarray(with_spectrum([1.0] * k), jnp.float32))) == pytest.approx(k, rel=1e-3)
    s = np.array([4.0, 2.0, 1.0, 0.5])
    p = s / s.sum()
    expected = np.exp(-(p * np.log(p)).sum())
    assert float(effective_rank(jnp.asarray(with_spectrum(s), jnp.float32))) == pytest.approx(expected, rel=1e-3)
    assert float(effective_rank(jnp.ones((8, 4)))) == 0.0  # a constant batch
    wide = jnp.asarray(rng.normal(size=(8, 64)), jnp.float32)  # N < D: at most N - 1 after centring
    assert 1 < float(effective_rank(wide)) <= 7


def test_embedding_metrics_healthy_and_collapsed():
    z = jax.random.normal(jax.random.key(0), (4096, 64))
    healthy = embedding_metrics(z)
    assert healthy["embedding_std_rel"] == pytest.approx(1.0, abs=0.02)
    assert healthy["embedding_std"] == pytest.approx(1 / 8, abs=0.003)
    collapsed = embedding_metrics(jnp.ones((256, 64)) + 1e-4 * z[:256])
    assert float(collapsed["embedding_std_rel"]) < 1e-3
