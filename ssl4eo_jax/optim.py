"""Optimisers and learning-rate schedules, built from ``config.optim``.

* ``lars``: the LARS of the official Barlow Twins code (also the SSL4EO review's): weight decay, then
  the layer-wise trust ratio ``eta * ||w|| / ||g||``, then heavy-ball momentum, then the learning
  rate. Biases and normalisation parameters (every 1-D parameter, as the reference's
  ``exclude_bias_and_norm``) get neither weight decay nor the trust ratio, and their own learning
  rate (``lr_biases``). ``lr_in_momentum=True`` is SimCLR's TF ``LARSOptimizer``
  (``classic_momentum``): the learning rate scales each step's update *before* it enters the
  momentum (``v = m v + lr * trust * g; w -= v``), so a change of lr (warm-up, decay) only acts on
  new gradients; the Barlow Twins LARS scales the whole momentum by the current lr.
* ``sgd``: SGD with momentum and coupled weight decay (PyTorch's ``SGD(weight_decay=...)``), on every
  parameter unless ``weight_decay_1d=False`` (DINO's groups: biases and norms without decay).
* ``adamw``: AdamW with decoupled weight decay (PyTorch's ``AdamW``: ``w -= lr * wd * w``), 1-D
  parameters excluded from decay unless ``weight_decay_1d=True`` (MoCo-v3 decays every parameter).

``weight_decay_end`` (unset: constant) makes the weight decay a per-step cosine from
``weight_decay`` at step 0 to ``weight_decay_end`` at the last step, DINO's ``wd_schedule``
(``utils.cosine_scheduler(weight_decay, weight_decay_end, epochs, niter_per_ep)``, 0.04 -> 0.4 for ViTs).

``clip_grad > 0`` first clips each parameter's gradient to that L2 norm on its own (DINO's
``clip_gradients``; not a global-norm clip).

Parameter groups (``ParamGroup``, chosen by a method): a group may keep its learning rate constant
at the base value (SimSiam's ``fix_pred_lr``) or be frozen for its first steps (SwAV's prototypes,
DINO's last layer). Frozen means what the reference's ``p.grad = None`` means: no update, no
weight decay, no momentum or Adam-moment change; the group's schedule then continues at the global
step.

Schedules: linear warm-up from 0 (``lr * step / warmup_steps``; with ``warmup_linspace``, DINO's
``lr * step / (warmup_steps - 1)``), then ``cosine`` decay to
``end_lr_fraction`` x lr, or ``step`` decay by ``gamma`` at ``milestones`` (epochs), or ``constant``.
``per_epoch=True`` evaluates the decay at the start of each epoch, as the reference scripts do
(the warm-up stays per step); otherwise it is smooth per step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ssl4eo_jax.errors import ConfigError

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def make_schedule(cfg: Any, base_lr: float, steps_per_epoch: float, total_steps: int) -> Schedule:
    """The learning rate as a function of the step, from ``cfg`` (``config.optim``)."""
    warmup = int(round(cfg.get("warmup_epochs", 0) * steps_per_epoch))
    kind = cfg.get("schedule", "cosine")
    per_epoch = bool(cfg.get("per_epoch", False))
    end = float(cfg.get("end_lr_fraction", 0.0))
    milestones = [int(m * steps_per_epoch) for m in cfg.get("milestones", ())]
    gamma = float(cfg.get("gamma", 0.1))
    # DINO's utils.cosine_scheduler warms up as np.linspace(0, lr, warmup_steps): lr at the last step
    warmup_span = max(warmup - 1, 1) if cfg.get("warmup_linspace", False) else warmup
    if kind not in ("cosine", "step", "constant"):
        raise ConfigError(f"Unknown schedule {kind!r} in config.optim.schedule; use cosine, step or constant.")

    def schedule(step: jnp.ndarray) -> jnp.ndarray:
        step = raw = jnp.asarray(step, jnp.float32)
        if per_epoch:  # the decay steps per epoch; the warm-up is always per step (SwAV's official)
            step = jnp.floor(step / steps_per_epoch) * steps_per_epoch
        if kind == "cosine":
            progress = jnp.clip((step - warmup) / max(1, total_steps - warmup), 0.0, 1.0)
            lr = base_lr * (end + (1 - end) * 0.5 * (1 + jnp.cos(math.pi * progress)))
        elif kind == "step":
            decays = sum(((step >= m).astype(jnp.float32) for m in milestones), jnp.zeros(()))
            lr = base_lr * gamma**decays
        else:
            lr = base_lr * jnp.ones(())
        if warmup > 0:  # from 0 at step 0, as the official Barlow Twins, VICReg, BYOL and SimCLR code
            lr = jnp.where(raw < warmup, base_lr * raw / warmup_span, lr)
        return lr

    return schedule


def weight_decay_schedule(cfg: Any, total_steps: int) -> float | Schedule:
    """``config.optim.weight_decay``, or DINO's cosine from it to ``weight_decay_end`` over the run."""
    base, end = float(cfg.weight_decay), cfg.get("weight_decay_end")
    if end is None:
        return base
    end = float(end)

    def schedule(step: jnp.ndarray) -> jnp.ndarray:
        progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(1, total_steps), 0.0, 1.0)
        return end + 0.5 * (base - end) * (1.0 + jnp.cos(math.pi * progress))

    return schedule


def is_matrix(params: Any) -> Any:
    """True for weight matrices and kernels, False for biases and norm parameters (1-D)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _group_labels(params: Any) -> Any:
    return jax.tree.map(lambda p: "weights" if p.ndim > 1 else "biases", params)


def lars(
    lr_weights: Schedule, lr_biases: Schedule, weight_decay: float, momentum: float = 0.9, eta: float = 0.001,
    lr_in_momentum: bool = False,
) -> optax.GradientTransformation:
    """The reference LARS (Barlow Twins official code) as an optax transformation; with
    ``lr_in_momentum``, SimCLR's (the lr applied before the momentum, see the module docstring)."""
    trace = optax.trace(decay=momentum, nesterov=False)
    scale = optax.multi_transform(
        {"weights": optax.scale_by_learning_rate(lr_weights), "biases": optax.scale_by_learning_rate(lr_biases)},
        _group_labels,
    )
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=is_matrix),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=eta), is_matrix),
        *((scale, trace) if lr_in_momentum else (trace, scale)),
    )


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """How one group of parameters departs from the optimizer's defaults."""

    constant_lr: bool = False  # the base lr at every step, no warm-up or decay (SimSiam fix_pred_lr)
    frozen_steps: int = 0  # no update of any kind for the first steps (SwAV prototypes, DINO last layer)
    frozen: bool = False  # never updated: requires_grad=False (MoCo-v3's patch projection, fixed position embeddings)


@dataclasses.dataclass(frozen=True)
class ParamGroups:
    """A method's parameter groups: ``labels(params)`` names a group per leaf ("default" or a key of
    ``groups``)."""

    labels: Callable[[Any], Any]
    groups: dict[str, ParamGroup]


class FreezeState(NamedTuple):
    count: jnp.ndarray
    inner: Any


def frozen_for(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """``inner`` that, for its first ``steps`` updates, outputs zeros and leaves its state untouched."""

    def init(params: Any) -> FreezeState:
        return FreezeState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates: Any, state: FreezeState, params: Any = None) -> tuple[Any, FreezeState]:
        new_updates, new_inner = inner.update(updates, state.inner, params)
        frozen = state.count < steps
        new_updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
        new_inner = jax.tree.map(lambda old, new: jnp.where(frozen, old, new), state.inner, new_inner)
        return new_updates, FreezeState(jnp.minimum(state.count + 1, steps), new_inner)

    return optax.GradientTransformation(init, update)


def clip_per_parameter(max_norm: float) -> optax.GradientTransformation:
    """DINO's ``clip_gradients``: each gradient scaled by ``min(1, max_norm / (||g|| + 1e-6))``."""

    def clip(g: jnp.ndarray) -> jnp.ndarray:
        return g * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(g) + 1e-6))

    return optax.stateless(lambda updates, params: jax.tree.map(clip, updates))


def _base_optimizer(cfg: Any, lr: Schedule, lr_biases: Schedule, weight_decay: float | Schedule
                    ) -> optax.GradientTransformation:
    name = cfg.name
    if name == "lars":
        if callable(weight_decay):
            raise ConfigError("config.optim.weight_decay_end (a weight-decay schedule) is for sgd and adamw, not lars.")
        return lars(lr, lr_biases, weight_decay, cfg.momentum, cfg.eta, bool(cfg.get("lr_in_momentum", False)))
    if name == "sgd":
        mask = None if cfg.get("weight_decay_1d", True) else is_matrix
        return optax.chain(
            optax.add_decayed_weights(weight_decay, mask=mask),
            optax.sgd(lr, momentum=cfg.momentum or None, nesterov=bool(cfg.get("nesterov", False))),
        )
    if name == "adamw":
        mask = None if cfg.get("weight_decay_1d", False) else is_matrix
        return optax.adamw(lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), weight_decay=weight_decay, mask=mask)
    raise ConfigError(f"Unknown optimizer {name!r} in config.optim.name; choose lars, sgd or adamw.")


def make_optimizer(cfg: Any, steps_per_epoch: float, total_steps: int, groups: ParamGroups | None = None
                   ) -> tuple[optax.GradientTransformation, Schedule]:
    """Builds the optimizer of ``config.optim`` (with a method's parameter groups); returns it and
    the schedule of the main lr."""
    lr = make_schedule(cfg, float(cfg.lr), steps_per_epoch, total_steps)
    lr_b = make_schedule(cfg, float(cfg.get("lr_biases", cfg.lr)), steps_per_epoch, total_steps)
    wd = weight_decay_schedule(cfg, total_steps)
    tx = _base_optimizer(cfg, lr, lr_b, wd)
    if groups is not None and groups.groups:
        txs = {"default": tx}
        for label, group in groups.groups.items():
            if group.frozen:
                txs[label] = optax.set_to_zero()
                continue
            g_lr, g_lr_b, g_wd = lr, lr_b, wd
            if group.constant_lr:
                g_lr, g_lr_b = (lambda _, v=float(cfg.lr): v), (lambda _, v=float(cfg.get("lr_biases", cfg.lr)): v)
            if group.frozen_steps > 0:  # the group's own step count starts after the freeze
                n = group.frozen_steps
                g_lr, g_lr_b = (lambda s, f=g_lr: f(s + n)), (lambda s, f=g_lr_b: f(s + n))
                g_wd = (lambda s, f=wd: f(s + n)) if callable(wd) else wd
            g_tx = _base_optimizer(cfg, g_lr, g_lr_b, g_wd)
            txs[label] = frozen_for(g_tx, group.frozen_steps) if group.frozen_steps > 0 else g_tx
        tx = optax.multi_transform(txs, groups.labels)
    if cfg.get("clip_grad", 0.0):
        tx = optax.chain(clip_per_parameter(float(cfg.clip_grad)), tx)
    return tx, lr
