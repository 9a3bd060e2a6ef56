"""Step equivalence with the official code: Barlow Twins, SimSiam, BYOL, VICReg.

Each test starts our method (``harness.run_jax``: ``ssl4eo_jax.train.update_step``) and a PyTorch
re-implementation of the official training step (``tests/official/<method>.py``) from the same
weights (our initial state), feeds both the same fixed views (no augmentation) for 3 optimizer
steps, and compares after every step: the loss, the learning rate, every parameter of the encoder
and heads, the BatchNorm running statistics, and the method's own state (BYOL's target network).
The official step runs in float64 and in float32; ours is held to the float64 result
(``_assert_matches_exact``: within the tolerances below or twice the official float32 run's own
round-off, whichever is larger).

Settings differ from the presets where that makes the comparison sharper, on both sides alike:
tiny heads; the official schedules (warm-up + cosine, SimSiam's per-epoch cosine) compressed so
that the lr changes within the 3 steps; learning rates and LARS ``eta`` raised so that 3 steps move
every weight matrix by far more than the tolerance (``_assert_trained``); weight decays raised
where the gradients would otherwise hide them (SimSiam, BYOL, VICReg; Barlow Twins' gradients dwarf
any decay, so it keeps the preset's). With these, mutations of the official side (no weight decay,
decay or trust ratio on biases, SimSiam's predictor lr, BYOL's tau one step late, a cosine over
another length) fail the comparison by 2x to 1000x the tolerance.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Mapping

import numpy as np
import pytest
import torch
from torch import nn

from tests.official import barlow as official_barlow
from tests.official import byol as official_byol
from tests.official import simsiam as official_simsiam
from tests.official import vicreg as official_vicreg
from tests.official.harness import (
    BATCH,
    WIDTH,
    encoder_state_dict,
    fixed_views,
    method_config,
    official_noise,
    run_jax,
    torch_encoder,
)

N_STEPS = 3
FEATURES = WIDTH * 8  # ResNet-18's pooled features
RTOL = 1e-4
# Absolute tolerances, for elements near 0 only (everything else meets RTOL):
# * ATOL_SCALE x the largest magnitude of the element's tensor. Float32 round-off in a gradient
#   element is relative to the terms of its sum, i.e. to the tensor's scale, not to the element:
#   against a float64 run of the official Barlow Twins step, PyTorch's own float32 step is off by
#   up to 3e-5 of a tensor's largest value (BN shifts, which start at 0, after one step), ours by
#   1.3e-5. ~0 elements (BN shifts, running means, single kernel entries) cannot meet RTOL; 1e-4 of
#   the tensor's scale is the same bound as RTOL, measured on the tensor.
# * ATOL, for tensors that are 0 in exact arithmetic and float32 noise (1e-12..1e-8) here: the
#   bias of a Linear followed by BN (its gradient is 0: VICReg's expander) and the running mean of
#   a BN whose input is already batch-centred (SimSiam's predictor after the projector's last BN).
#   1e-7 is 10x the largest such noise seen.
ATOL_SCALE = 1e-4
ATOL = 1e-7


# ----------------------------------------------------------------------------- shared pieces


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """PyTorch on one thread: these tiny steps gain nothing from more, and OpenMP threads that
    spin beside XLA's on a small shared machine slow them down many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """``{"linear0": {"kernel": x}}`` -> ``{"linear0/kernel": x}``."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def _mlp_vars(seq: nn.Sequential) -> dict[str, torch.Tensor]:
    """An official head's trainable parameters and BN statistics under our MLP's names: the i-th
    Linear is ``linear{i}`` (kernel = weight^T), the BN after it ``bn{i}``. A frozen bias (SimSiam's
    last Linear) is not a trainable parameter and is left out."""
    out, i = {}, -1
    for m in seq:
        if isinstance(m, nn.Linear):
            i += 1
            out[f"linear{i}/kernel"] = m.weight.T
            if m.bias is not None and m.bias.requires_grad:
                out[f"linear{i}/bias"] = m.bias
        elif isinstance(m, nn.BatchNorm1d):
            if m.affine:
                out[f"bn{i}/scale"], out[f"bn{i}/bias"] = m.weight, m.bias
            out[f"bn{i}/mean"], out[f"bn{i}/var"] = m.running_mean, m.running_var
    return out


def _ours(variables: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
    """Our head ``name``'s parameters and BN statistics, flat."""
    return {**_flat(variables["params"][name]), **_flat(variables["batch_stats"].get(name, {}))}


def _load_mlp(seq: nn.Sequential, variables: Mapping[str, Any], name: str) -> None:
    """Our head's weights into the official head; the two must have the same variables."""
    ours, theirs = _ours(variables, name), _mlp_vars(seq)
    assert set(ours) == set(theirs), (name, sorted(set(ours) ^ set(theirs)))
    with torch.no_grad():
        for key, tensor in theirs.items():
            tensor.copy_(torch.from_numpy(np.array(ours[key])))


def _backbone(variables: Mapping[str, Any]) -> nn.Module:
    return torch_encoder({"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]})


def _assert_step(step: int, metrics: dict[str, float], loss: float, lr: float) -> None:
    np.testing.assert_allclose(metrics["loss"], loss, rtol=RTOL, err_msg=f"loss at step {step}")
    np.testing.assert_allclose(metrics["lr"], lr, rtol=1e-5, atol=1e-9, err_msg=f"lr at step {step}")


def _assert_trained(initial: Mapping[str, Any], final: Mapping[str, Any]) -> None:
    """Every encoder and head weight matrix moved by > 50x the tolerance (by 1-2 % in these
    settings): the comparison is not vacuous."""
    before, after = _flat(initial["params"]), _flat(final["params"])
    for key in before:
        if before[key].ndim > 1:
            change = np.linalg.norm(after[key] - before[key]) / np.linalg.norm(before[key])
            assert change > 50 * RTOL, f"{key} moved by only {change:.2e}"


def _views(n_steps: int = N_STEPS) -> tuple[list[list[np.ndarray]], list[list[torch.Tensor]]]:
    views = fixed_views(n_steps)
    return views, [[_nchw(v) for v in step] for step in views]


# ----------------------------------------------------------------------------- Barlow Twins


def test_barlow_twins_matches_official():
    """facebookresearch/barlowtwins ``main.py``: ``BarlowTwins.forward`` (+ ``off_diagonal``),
    ``LARS`` with ``exclude_bias_and_norm`` on the weights/biases groups of ``main_worker``, and
    ``adjust_learning_rate`` (10 warm-up epochs, cosine to 0.001 x base)."""
    # 0.1 steps per epoch: the official's 10 warm-up epochs are 1 step, the 60 epochs 6 steps, so
    # the 3 steps are warm-up (lr 0), cosine start, and cosine decay. (Our preset follows the SSL4EO
    # review's copy, without warm-up and with an end lr of 0; the schedule is the same function.)
    steps_per_epoch, epochs = 0.1, 60
    total = round(epochs * steps_per_epoch)
    config = method_config("barlow", **{
        "barlow.projector": (64, 64, 64), "optim.warmup_epochs": 10.0, "optim.end_lr_fraction": 0.001,
        "optim.base_lr": 1.6, "optim.eta": 0.05})
    views, tviews = _views()
    initial, states, metrics = run_jax(config, views, steps_per_epoch, total)

    # The official's lr is (global batch / 256) x learning_rate_{weights,biases}: our base_lr and
    # base_lr_biases, which config.optim scales by global batch / 256 in the same way.
    args = types.SimpleNamespace(epochs=epochs, batch_size=BATCH, learning_rate_weights=config.optim.base_lr,
                                 learning_rate_biases=config.optim.base_lr_biases,
                                 weight_decay=config.optim.weight_decay, lambd=config.barlow.lambd,
                                 projector="64-64-64")

    official = _lars_projector_runner(official_barlow, official_barlow.BarlowTwins, args, config, initial, tviews,
                                      steps_per_epoch)
    _assert_matches_exact(official, [_ours_snapshot(s, ("projector",), "online") for s in [initial, *states]],
                          metrics)
    _assert_trained(initial, states[-1])


# ----------------------------------------------------------------------------- SimSiam


@pytest.mark.parametrize("fix_pred_lr", [False, True])
def test_simsiam_matches_official(fix_pred_lr):
    """facebookresearch/simsiam ``simsiam/builder.py``: ``SimSiam.__init__`` and ``forward``;
    ``main_simsiam.py``: ``train`` (``nn.CosineSimilarity`` loss), SGD with momentum 0.9 and weight
    decay on the ``fix_pred_lr`` parameter groups, ``adjust_learning_rate`` (cosine per epoch)."""
    # 2 steps per epoch over 4 epochs: the per-epoch cosine holds the lr for steps 0 and 1 and
    # lowers it at step 2 (the predictor keeps init_lr throughout with fix_pred_lr). Our preset has
    # the SSL4EO review's ResNet-18 step decay instead (the official's --cos off); same schedule code.
    steps_per_epoch, epochs = 2, 4
    dim, pred_dim = 32, 16
    config = method_config("simsiam", **{
        "simsiam.projector": (FEATURES, FEATURES, dim), "simsiam.predictor": (pred_dim, dim),
        "simsiam.fix_pred_lr": fix_pred_lr, "optim.schedule": "cosine", "optim.per_epoch": True,
        "optim.warmup_epochs": 0.0, "optim.base_lr": 6.4, "optim.weight_decay": 1e-2})
    views, tviews = _views()
    initial, states, metrics = run_jax(config, views, steps_per_epoch, epochs * steps_per_epoch)

    args = types.SimpleNamespace(epochs=epochs, fix_pred_lr=fix_pred_lr, momentum=config.optim.momentum,
                                 weight_decay=config.optim.weight_decay)
    init_lr = config.optim.base_lr * BATCH / 256  # main_simsiam.py: init_lr = args.lr * args.batch_size / 256

    def official(dtype: torch.dtype) -> tuple[list[dict], list[tuple]]:
        model = official_simsiam.SimSiam(_backbone(initial), FEATURES, dim, pred_dim)
        # The official's last projector Linear keeps a frozen bias (randomly initialised) that the
        # affine-free BN after it removes exactly; ours has none. Zero: the official with any bias
        # trains identically, only that last BN's running mean would carry the constant bias.
        with torch.no_grad():
            model.projector[6].bias.zero_()
        _load_mlp(model.projector, initial, "projector")
        _load_mlp(model.predictor, initial, "predictor")
        model = model.to(dtype)
        criterion = nn.CosineSimilarity(dim=1)
        optimizer = official_simsiam.make_optimizer(args, model, init_lr)
        heads = {"projector": model.projector, "predictor": model.predictor}
        snapshots, scalars = [_snapshot(model.backbone, heads, "online")], []
        for step in range(N_STEPS):
            epoch = step // steps_per_epoch
            x1, x2 = (v.to(dtype) for v in tviews[step])
            scalars.append(official_simsiam.train_step(args, model, criterion, optimizer, init_lr, epoch, x1, x2))
            snapshots.append(_snapshot(model.backbone, heads, "online"))
        return snapshots, scalars

    ours = [_ours_snapshot(s, ("projector", "predictor"), "online") for s in [initial, *states]]
    _assert_matches_exact(official, ours, metrics)
    _assert_trained(initial, states[-1])


# ----------------------------------------------------------------------------- BYOL


def _snapshot(backbone: nn.Module, heads: dict[str, nn.Sequential], prefix: str) -> dict[str, np.ndarray]:
    """The official side's encoder (state_dict names) and heads (our MLP's names) as float64 arrays."""
    out = {f"{prefix} encoder {k}": v.detach().double().numpy().copy() for k, v in backbone.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    for name, seq in heads.items():
        out.update({f"{prefix} {name} {k}": v.detach().double().numpy().copy() for k, v in _mlp_vars(seq).items()})
    return out


def _ours_snapshot(variables: Mapping[str, Any], heads: tuple[str, ...], prefix: str) -> dict[str, np.ndarray]:
    """Ours under the same names as ``_snapshot``."""
    out = {f"{prefix} encoder {k}": np.asarray(v) for k, v in encoder_state_dict(variables).items()
           if not k.endswith("num_batches_tracked")}
    for name in heads:
        out.update({f"{prefix} {name} {k}": v for k, v in _ours(variables, name).items()})
    return out


def _assert_matches_exact(official: Callable[[torch.dtype], tuple[list[dict], list[tuple]]],
                          ours: list[dict[str, np.ndarray]], metrics: list[dict[str, float]]) -> list[tuple]:
    """Ours (``ours[0]`` the initial variables, then one snapshot per step) against the official
    step run in float64, within RTOL and the module's absolute tolerances or, where larger, twice
    the official float32 run's own round-off (``harness.official_noise``), as the contrastive and
    clustering tests are held. Float32 BN shifts' gradients are sums over every pixel that nearly
    cancel, and PyTorch's float32 result for them depends on its thread count (BYOL's ``bn1.bias``
    after 3 steps: up to 5 % of its value from the float64 step on one thread, as in this module,
    within 1e-5 on two), so a float32 reference would judge PyTorch's summation order, not ours.
    Checks each step's loss and lr too; returns the official (float64) per-step scalars."""
    exact, scalars = official(torch.float64)
    float32, _ = official(torch.float32)
    assert len(exact) == len(ours) == len(scalars) + 1
    for step, (mine, theirs, rounded) in enumerate(zip(ours, exact, float32)):
        assert set(mine) == set(theirs), sorted(set(mine) ^ set(theirs))
        noise = official_noise(theirs, rounded)
        for key, value in theirs.items():
            atol = max(ATOL + ATOL_SCALE * float(np.abs(value).max(initial=0.0)), noise[key])
            np.testing.assert_allclose(mine[key], value, rtol=RTOL, atol=atol, err_msg=f"after {step} steps: {key}")
    for step, (loss, lr, *_) in enumerate(scalars):
        _assert_step(step, metrics[step], loss, lr)
    return scalars


def _lars_projector_runner(official: Any, model_cls: Any, args: Any, config: Any, initial: Mapping[str, Any],
                           tviews: list[list[torch.Tensor]], steps_per_epoch: float
                           ) -> Callable[[torch.dtype], tuple[list[dict], list[tuple]]]:
    """For ``_assert_matches_exact``: the official Barlow Twins / VICReg step (one shape: a backbone
    and a projector, ``make_optimizer(args, model, eta)``, ``train_step(args, model, optimizer,
    steps_per_epoch, step, x, y)``) from our initial weights in a given dtype."""

    def run(dtype: torch.dtype) -> tuple[list[dict], list[tuple]]:
        model = model_cls(args, _backbone(initial), FEATURES)
        _load_mlp(model.projector, initial, "projector")
        model = model.to(dtype)
        optimizer = official.make_optimizer(args, model, eta=config.optim.eta)
        snapshots, scalars = [_snapshot(model.backbone, {"projector": model.projector}, "online")], []
        for step in range(N_STEPS):
            x, y = (v.to(dtype) for v in tviews[step])
            scalars.append(official.train_step(args, model, optimizer, steps_per_epoch, step, x, y))
            snapshots.append(_snapshot(model.backbone, {"projector": model.projector}, "online"))
        return snapshots, scalars

    return run


def _run_official_byol(config: Any, initial: Mapping[str, Any], tviews: list[list[torch.Tensor]],
                       steps_per_epoch: int, total: int, warmup: int, hidden: int, out: int, dtype: torch.dtype
                       ) -> tuple[list[dict[str, np.ndarray]], list[tuple[float, float, float]]]:
    """The official BYOL step from our initial weights in ``dtype``: the online and target networks
    after every step (the initial ones first), and each step's (loss, lr, tau)."""
    online = official_byol.BYOLNetwork(_backbone(initial), FEATURES, hidden, out, hidden)
    _load_mlp(online.projector.net, initial, "projector")
    _load_mlp(online.predictor.net, initial, "predictor")
    target = official_byol.make_target(online)
    target_vars = {"params": initial["extra"]["target_params"], "batch_stats": initial["extra"]["target_batch_stats"]}
    target.encoder.load_state_dict(_backbone(target_vars).state_dict())
    _load_mlp(target.projector.net, target_vars, "projector")
    online, target = online.to(dtype), target.to(dtype)
    optimizer = official_byol.LARS(online, weight_decay=config.optim.weight_decay, momentum=config.optim.momentum,
                                   eta=config.optim.eta)

    def snapshot() -> dict[str, np.ndarray]:
        return {**_snapshot(online.encoder, {"projector": online.projector.net, "predictor": online.predictor.net},
                            "online"),
                **_snapshot(target.encoder, {"projector": target.projector.net}, "target")}

    snapshots, scalars = [snapshot()], []
    for step in range(N_STEPS):
        view1, view2 = (v.to(dtype) for v in tviews[step])
        scalars.append(official_byol.update_fn(
            online, target, optimizer, step, view1, view2, batch_size=BATCH, base_learning_rate=config.optim.base_lr,
            max_steps=total, warmup_steps=warmup, base_target_ema=config.byol.momentum))
        snapshots.append(snapshot())
    return snapshots, scalars


def test_byol_matches_official():
    """google-deepmind/deepmind-research ``byol/byol_experiment.py``: ``loss_fn``
    (``helpers.regression_loss``) and ``_update_fn`` (LARS step with ``schedules.learning_schedule``,
    then the target EMA with ``schedules.target_ema``); ``utils/networks.py: MLP``;
    ``utils/optimizers.py: lars`` with ``exclude_bias_and_norm``."""
    # 1 warm-up step of 6: lr 0, then the cosine's start and its first decay; tau moves every step.
    steps_per_epoch, total, warmup = 1, 6, 1
    hidden, out = 64, 32
    config = method_config("byol", **{
        "byol.projector": (hidden, out), "byol.predictor": (hidden, out), "byol.momentum": 0.9,
        "optim.warmup_epochs": float(warmup), "optim.eta": 0.4, "optim.weight_decay": 1e-2})
    assert config.optim.lr_biases == config.optim.lr  # the official LARS has one lr for all parameters
    views, tviews = _views()
    initial, states, metrics = run_jax(config, views, steps_per_epoch, total)

    def ours(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
        target = {"params": state["extra"]["target_params"], "batch_stats": state["extra"]["target_batch_stats"]}
        return {**_ours_snapshot(state, ("projector", "predictor"), "online"),
                **_ours_snapshot(target, ("projector",), "target")}

    scalars = _assert_matches_exact(
        lambda dtype: _run_official_byol(config, initial, tviews, steps_per_epoch, total, warmup, hidden, out, dtype),
        [ours(s) for s in [initial, *states]], metrics)
    for step, (_, _, tau) in enumerate(scalars):
        np.testing.assert_allclose(metrics[step]["momentum"], tau, rtol=1e-6, err_msg=f"tau at step {step}")
    _assert_trained(initial, states[-1])


# ----------------------------------------------------------------------------- VICReg


def test_vicreg_matches_official():
    """facebookresearch/vicreg ``main_vicreg.py``: ``VICReg.forward`` (+ ``off_diagonal``),
    ``Projector``, ``LARS`` with ``exclude_bias_and_norm``, ``adjust_learning_rate`` (10 warm-up
    epochs, cosine to 0.001 x lr)."""
    steps_per_epoch, epochs = 0.1, 60  # as Barlow Twins: warm-up step, cosine start, cosine decay
    total = round(epochs * steps_per_epoch)
    config = method_config("vicreg", **{
        "vicreg.projector": (64, 64, 64), "optim.warmup_epochs": 10.0, "optim.eta": 0.4,
        "optim.weight_decay": 1e-2})
    assert config.optim.end_lr_fraction == 0.001
    assert config.optim.lr_biases == config.optim.lr  # the official LARS has one lr for all parameters
    views, tviews = _views()
    initial, states, metrics = run_jax(config, views, steps_per_epoch, total)

    args = types.SimpleNamespace(epochs=epochs, batch_size=BATCH, base_lr=config.optim.base_lr,
                                 wd=config.optim.weight_decay, mlp="64-64-64", sim_coeff=config.vicreg.sim_coeff,
                                 std_coeff=config.vicreg.std_coeff, cov_coeff=config.vicreg.cov_coeff)

    official = _lars_projector_runner(official_vicreg, official_vicreg.VICReg, args, config, initial, tviews,
                                      steps_per_epoch)
    _assert_matches_exact(official, [_ours_snapshot(s, ("projector",), "online") for s in [initial, *states]],
                          metrics)
    _assert_trained(initial, states[-1])
