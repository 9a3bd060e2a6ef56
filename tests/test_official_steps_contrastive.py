"""Step equivalence of the contrastive methods with their official code: MoCo v2 and SimCLR.

Our ``train.update_step`` and a PyTorch re-implementation of the official training step
(``tests/official/mocov2.py``: facebookresearch/moco; ``tests/official/simclr.py``:
google-research/simclr) start from the same weights, see the same fixed views (no augmentation)
and take 3 optimizer steps at a learning rate that changes between steps; losses, parameters, BN
running statistics and the methods' state (key encoder, queue) agree to 1e-4 relative in float32.
MoCo's official step runs in float64 (the reference) and in float32: where the official code's own
float32 round-off exceeds the fixed tolerance, ours is held to twice it (``harness.official_noise``).

Hyperparameters are chosen so that the 3 steps move the compared quantities by several times the
tolerance (asserted by ``_assert_moved``) while staying where float32 round-off is not amplified
beyond it. Larger than published: MoCo's key momentum (0.5, not 0.999: at 0.999 the key encoder
moves by 1e-3 of the query's step), the weight decays and LARS's ``eeta`` (0.2, not 0.001: a weight
matrix moves by lr x eeta of its norm per step), which would be invisible at 1e-4. Smaller: the
learning rates. At larger ones the official code itself, run in float32 and in float64, disagrees by
more than 1e-4 after 3 steps (BN over 4-example groups for MoCo; the gradient of the next step is
very sensitive to the weights), so the comparison would measure amplified round-off, not logic.
The logic does not depend on these values; both sides get the same ones.

``atol`` 1e-6 (the harness default) only covers entries that are ~0 (BN shifts starting at 0,
near-zero running means), whose float32 round-off in another order of summation has no meaningful
relative size. MoCo's queue holds unit vectors and is compared per key, to 1e-4 of its norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ssl4eo_jax.interop.resnet_weights import encoder_to_state_dict
from ssl4eo_jax.methods import TrainLength, get_method
from ssl4eo_jax.methods.base import method_key
from tests.official import harness
from tests.official import mocov2 as official_moco
from tests.official import simclr as official_simclr

STEPS = 3


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _torch_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def _assert_moved(before: dict[str, np.ndarray], after: dict[str, np.ndarray], min_change: float = 3e-4) -> None:
    """The steps changed the typical compared tensor by several times the 1e-4 tolerance."""
    changes = [np.linalg.norm(np.asarray(after[k]) - np.asarray(before[k])) / (np.linalg.norm(np.asarray(before[k]))
                                                                                 + 1e-12) for k in before]
    assert np.median(changes) > min_change, np.median(changes)


# ----------------------------------------------------------------------------------------- MoCo v2

MOCO_SPE, MOCO_TOTAL = 1.0, 4  # one step per epoch: the per-epoch cosine changes at every step


def _moco_config(**overrides):
    settings = {
        "mocov2.projector": (32, 16), "mocov2.queue_size": 32, "mocov2.bn_group_size": 4,
        "mocov2.momentum": 0.5,  # published 0.999 (see the module docstring)
        "optim.base_lr": 0.0125,  # lr 7.8e-4 at batch 16 (published 0.05 at 256; see the module docstring)
        "optim.weight_decay": 0.3,  # published 1e-4: lr x 1e-4 of each weight per step is invisible
        "optim.warmup_epochs": 0.0,  # the official MoCo has no warm-up (our demo presets add one)
    }
    settings.update(overrides)
    return harness.method_config("mocov2", **settings)


@pytest.fixture(scope="module")
def moco_views():
    return harness.fixed_views(STEPS, seed=1)


@pytest.fixture(scope="module")
def moco_run(moco_views):
    config = _moco_config()
    return config, harness.run_jax(config, moco_views, MOCO_SPE, MOCO_TOTAL)


def _torch_moco(config, initial, n_gpus: int, dtype: torch.dtype = torch.float32) -> official_moco.MoCo:
    params, stats = initial["params"], initial["batch_stats"]
    # Our key network starts as a copy of the query network (the official copies the parameters
    # and has fresh buffers: the same initial statistics).
    for ours, key in ((params, initial["extra"]["key_params"]), (stats, initial["extra"]["key_batch_stats"])):
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(key), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    encoder = harness.torch_encoder({"params": params["encoder"], "batch_stats": stats["encoder"]})
    head = params["projector"]
    fc = official_moco.mlp_head(harness.torch_linear(head["linear0"]["kernel"], head["linear0"]["bias"]),
                                harness.torch_linear(head["linear1"]["kernel"], head["linear1"]["bias"]))
    queue = torch.from_numpy(np.array(initial["extra"]["queue"]).T)  # ours (K, D), official (D, K)
    return official_moco.MoCo(official_moco.EncoderWithHead(encoder, fc), queue, m=config.mocov2.momentum,
                              T=config.mocov2.temperature, n_gpus=n_gpus).to(dtype)


def _moco_ours(state) -> dict[str, np.ndarray]:
    """Our state in the official's names: query network, key network, queue (D, K), pointer."""
    out = {}
    for prefix, params, stats in (("encoder_q", state["params"], state["batch_stats"]),
                                  ("encoder_k", state["extra"]["key_params"], state["extra"]["key_batch_stats"])):
        enc = encoder_to_state_dict({"params": params["encoder"], "batch_stats": stats["encoder"]})
        out.update({f"{prefix}.encoder.{k}": v for k, v in enc.items()})
        for i, name in ((0, "linear0"), (2, "linear1")):
            out[f"{prefix}.fc.{i}.weight"] = np.asarray(params["projector"][name]["kernel"]).T
            out[f"{prefix}.fc.{i}.bias"] = np.asarray(params["projector"][name]["bias"])
    out["queue"] = np.asarray(state["extra"]["queue"]).T
    out["queue_ptr"] = np.asarray(state["extra"]["queue_ptr"]).reshape(1)
    return {k: v for k, v in out.items() if not k.endswith("num_batches_tracked")}


def _assert_moco_close(ours: dict[str, np.ndarray], theirs: dict[str, object], rtol: float, what: str,
                       noise: dict[str, float] | None = None) -> None:
    """Every tensor to ``rtol`` (atol 1e-6, or ``noise``'s bound where larger); the queue per key, to
    1e-4 of its norm (or ``noise``'s): the keys are unit vectors, float32 round-off through BN over
    4-example groups leaves ~2e-5 per entry (1.7e-5 between the official code in float32 and in
    float64 at the first step), and an entry near 0 has no meaningful relative error."""
    theirs = dict(theirs)
    queue = harness.as_numpy(theirs.pop("queue"))
    np.testing.assert_array_less(np.linalg.norm(ours["queue"] - queue, axis=0), max(1e-4, (noise or {}).get("queue", 0)),
                                 err_msg=f"{what}queue")
    harness.assert_close(ours, theirs, rtol=rtol, atol=1e-6, what=what, noise=noise)


def _run_torch_moco(config, initial, views, shuffle: bool, dtype: torch.dtype = torch.float32
                    ) -> tuple[official_moco.MoCo, list[float], list[float]]:
    """The official step on ``views`` in ``dtype``: the model after the steps, the losses and the lrs."""
    group = config.mocov2.bn_group_size
    n_gpus = harness.BATCH // group if shuffle else 1  # shuffle_bn=False: global BN, i.e. one "GPU"
    model = _torch_moco(config, initial, n_gpus, dtype)
    method = get_method(config, TrainLength(MOCO_SPE, MOCO_TOTAL))
    optimizer = official_moco.make_optimizer(model, float(config.optim.lr), config.optim.momentum,
                                             config.optim.weight_decay)
    epochs = int(MOCO_TOTAL / MOCO_SPE)
    losses, lrs = [], []
    for step, (im_q, im_k) in enumerate(views):
        epoch = int(step // MOCO_SPE)
        lrs.append(official_moco.adjust_learning_rate(optimizer, epoch, float(config.optim.lr), epochs, cos=True))
        # Ours draws the permutation; without shuffle-BN the single GPU's permutation leaves the
        # keys unchanged (BN over the whole batch, then unshuffled), so the identity stands for it.
        perm = (torch.from_numpy(np.array(method.shuffle_permutation(method_key(config.seed, jnp.int32(step)), harness.BATCH))).long()
                if shuffle else torch.arange(harness.BATCH))
        if shuffle:  # the keys' BN groups mix examples of different query groups
            assert any(len({int(i) // group for i in g}) > 1 for g in perm.view(-1, group))
        losses.append(official_moco.train_step(model, optimizer, _nchw(im_q).to(dtype), _nchw(im_k).to(dtype), perm))
    return model, losses, lrs


def _check_moco(config, run, views, shuffle: bool) -> None:
    """Ours against the official step run in float64, within 1e-4 or, where larger, twice the
    official float32 run's own round-off (``harness.official_noise``)."""
    initial, states, metrics = run
    model, losses, lrs = _run_torch_moco(config, initial, views, shuffle, torch.float64)
    model32, _, _ = _run_torch_moco(config, initial, views, shuffle, torch.float32)
    assert len(set(lrs)) == STEPS, lrs  # the lr changes at every step
    np.testing.assert_allclose([m["lr"] for m in metrics], lrs, rtol=1e-6)
    np.testing.assert_allclose([m["loss"] for m in metrics], losses, rtol=1e-4)
    ours = _moco_ours(states[-1])
    theirs, theirs32 = _torch_state(model), _torch_state(model32)
    assert set(theirs) == set(ours), sorted(set(theirs) ^ set(ours))
    noise = harness.official_noise(theirs, theirs32)
    noise["queue"] = harness.NOISE_FACTOR * float(np.max(np.linalg.norm(
        harness.as_numpy(theirs32["queue"]) - harness.as_numpy(theirs["queue"]), axis=0)))
    _assert_moco_close(ours, theirs, rtol=1e-4, what="mocov2: ", noise=noise)
    assert int(ours["queue_ptr"][0]) == (STEPS * harness.BATCH) % config.mocov2.queue_size  # moved and wrapped
    before = _moco_ours(initial)
    _assert_moved({k: v for k, v in before.items() if k.startswith("encoder_k") and k.endswith("weight")},
                  {k: v for k, v in ours.items() if k.startswith("encoder_k") and k.endswith("weight")})
    _assert_moved({k: v for k, v in before.items() if k.startswith("encoder_q") and k.endswith("weight")},
                  {k: v for k, v in ours.items() if k.startswith("encoder_q") and k.endswith("weight")})


def test_mocov2_matches_official_with_shuffle_bn(moco_views, moco_run):
    config, run = moco_run
    _check_moco(config, run, moco_views, shuffle=True)


def test_mocov2_matches_official_with_global_bn(moco_views):
    config = _moco_config(**{"mocov2.shuffle_bn": False})
    _check_moco(config, harness.run_jax(config, moco_views, MOCO_SPE, MOCO_TOTAL), moco_views, shuffle=False)


def test_mocov2_is_the_same_on_1_and_8_devices(moco_views, moco_run):
    config, (_, states_1, metrics_1) = moco_run
    _, states_8, metrics_8 = harness.run_jax(config, moco_views, MOCO_SPE, MOCO_TOTAL, n_devices=8)
    np.testing.assert_allclose([m["loss"] for m in metrics_8], [m["loss"] for m in metrics_1], rtol=1e-5)
    one, eight = _moco_ours(states_1[-1]), _moco_ours(states_8[-1])
    _assert_moco_close(eight, one, rtol=1e-5, what="mocov2 8 vs 1 device: ")


# ----------------------------------------------------------------------------------------- SimCLR

SIMCLR_SPE, SIMCLR_TOTAL = 1.0, 6  # warm-up over steps 0-1, then cosine: the lr changes every step


def _simclr_config():
    return harness.method_config("simclr", **{
        "simclr.projector": (64, 32),
        "optim.warmup_epochs": 2.0,
        "optim.base_lr": 0.1, "optim.base_lr_biases": 0.1,  # lr 6.25e-3 at batch 16 (published 0.3 at 256)
        "optim.eta": 0.2,  # published 0.001 (see the module docstring)
        "optim.weight_decay": 1e-2,  # published 1e-6
    })


def _torch_simclr(initial) -> official_simclr.SimCLR:
    params, stats = initial["params"], initial["batch_stats"]
    encoder = harness.torch_encoder({"params": params["encoder"], "batch_stats": stats["encoder"]})
    head, head_stats = params["projector"], stats["projector"]
    d_hidden, d_out = np.shape(head["linear1"]["kernel"])
    bn_0 = harness.torch_bn(head["bn0"]["scale"], head["bn0"]["bias"], d_hidden)
    bn_1 = official_simclr.ScaleOnlyBN(d_out)
    with torch.no_grad():
        bn_1.gamma.copy_(torch.from_numpy(np.array(head["bn1"]["scale"])))
        for bn, name in ((bn_0, "bn0"), (bn_1.bn, "bn1")):
            bn.running_mean.copy_(torch.from_numpy(np.array(head_stats[name]["mean"])))
            bn.running_var.copy_(torch.from_numpy(np.array(head_stats[name]["var"])))
    proj = official_simclr.ProjectionHead(harness.torch_linear(head["linear0"]["kernel"]), bn_0,
                                          harness.torch_linear(head["linear1"]["kernel"]), bn_1)
    return official_simclr.SimCLR(encoder, proj)


def _simclr_ours(state) -> dict[str, np.ndarray]:
    params, stats = state["params"]["projector"], state["batch_stats"]["projector"]
    out = {f"base_model.{k}": v for k, v in harness.encoder_state_dict(state).items()
           if not k.endswith("num_batches_tracked")}
    out.update({
        "head_contrastive.nl_0.weight": np.asarray(params["linear0"]["kernel"]).T,
        "head_contrastive.bn_0.weight": params["bn0"]["scale"], "head_contrastive.bn_0.bias": params["bn0"]["bias"],
        "head_contrastive.bn_0.running_mean": stats["bn0"]["mean"],
        "head_contrastive.bn_0.running_var": stats["bn0"]["var"],
        "head_contrastive.nl_1.weight": np.asarray(params["linear1"]["kernel"]).T,
        "head_contrastive.bn_1.gamma": params["bn1"]["scale"],
        "head_contrastive.bn_1.bn.running_mean": stats["bn1"]["mean"],
        "head_contrastive.bn_1.bn.running_var": stats["bn1"]["var"],
    })
    return {k: np.asarray(v) for k, v in out.items()}


def test_simclr_matches_official():
    config = _simclr_config()
    views = harness.fixed_views(STEPS, seed=2)
    initial, states, metrics = harness.run_jax(config, views, SIMCLR_SPE, SIMCLR_TOTAL)
    model = _torch_simclr(initial)
    optimizer = official_simclr.make_optimizer(model, config.optim.momentum, config.optim.weight_decay,
                                               eeta=config.optim.eta)
    warmup = int(round(config.optim.warmup_epochs * SIMCLR_SPE))
    lrs, losses = [], []
    for step, (v1, v2) in enumerate(views):
        lr = official_simclr.learning_rate_schedule(step, config.optim.base_lr, harness.BATCH, warmup, SIMCLR_TOTAL)
        lrs.append(lr)
        losses.append(official_simclr.train_step(model, optimizer, _nchw(v1), _nchw(v2), lr,
                                                 config.simclr.temperature))
    assert len(set(lrs)) == STEPS, lrs  # the lr changes at every step
    np.testing.assert_allclose([m["lr"] for m in metrics], lrs, rtol=1e-6)
    np.testing.assert_allclose([m["loss"] for m in metrics], losses, rtol=1e-4)
    ours, theirs = _simclr_ours(states[-1]), _torch_state(model)
    assert set(theirs) == set(ours), sorted(set(theirs) ^ set(ours))
    harness.assert_close(ours, theirs, rtol=1e-4, atol=1e-6, what="simclr: ")
    before = _simclr_ours(initial)
    _assert_moved({k: v for k, v in before.items() if k.endswith("weight")},
                  {k: v for k, v in ours.items() if k.endswith("weight")})
