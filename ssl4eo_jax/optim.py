"""Optimisers and learning-rate schedules, built from ``config.optim``.

* ``lars``: the LARS of the official Barlow Twins code (also the SSL4EO review's): weight decay, then
  the layer-wise trust ratio ``eta * ||w|| / ||g||``, then heavy-ball momentum, then the learning
  rate. Biases and normalisation parameters (every 1-D parameter, as the reference's
  ``exclude_bias_and_norm``) get neither weight decay nor the trust ratio, and their own learning
  rate (``lr_biases``).
* ``sgd``: SGD with momentum and coupled weight decay (PyTorch's ``SGD(weight_decay=...)``).
* ``adamw``: AdamW with decoupled weight decay, 1-D parameters excluded from decay.

Schedules: linear warm-up, then ``cosine`` decay to ``end_lr_fraction`` x lr, or ``step`` decay by
``gamma`` at ``milestones`` (epochs), or ``constant``. ``per_epoch=True`` evaluates the schedule at the
start of each epoch, as the reference scripts do; otherwise it is smooth per step.
"""

from __future__ import annotations

import math
from typing import Any, Callable

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
    if kind not in ("cosine", "step", "constant"):
        raise ConfigError(f"Unknown schedule {kind!r} in config.optim.schedule; use cosine, step or constant.")

    def schedule(step: jnp.ndarray) -> jnp.ndarray:
        step = jnp.asarray(step, jnp.float32)
        if per_epoch:
            step = jnp.floor(step / steps_per_epoch) * steps_per_epoch
        if kind == "cosine":
            progress = jnp.clip((step - warmup) / max(1, total_steps - warmup), 0.0, 1.0)
            lr = base_lr * (end + (1 - end) * 0.5 * (1 + jnp.cos(math.pi * progress)))
        elif kind == "step":
            decays = sum(((step >= m).astype(jnp.float32) for m in milestones), jnp.zeros(()))
            lr = base_lr * gamma**decays
        else:
            lr = base_lr * jnp.ones(())
        if warmup > 0:
            lr = jnp.where(step < warmup, base_lr * (step + 1) / warmup, lr)
        return lr

    return schedule


def is_matrix(params: Any) -> Any:
    """True for weight matrices and kernels, False for biases and norm parameters (1-D)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _group_labels(params: Any) -> Any:
    return jax.tree.map(lambda p: "weights" if p.ndim > 1 else "biases", params)


def lars(
    lr_weights: Schedule, lr_biases: Schedule, weight_decay: float, momentum: float = 0.9, eta: float = 0.001
) -> optax.GradientTransformation:
    """The reference LARS (Barlow Twins official code) as an optax transformation."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=is_matrix),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=eta), is_matrix),
        optax.trace(decay=momentum, nesterov=False),
        optax.multi_transform(
            {"weights": optax.scale_by_learning_rate(lr_weights), "biases": optax.scale_by_learning_rate(lr_biases)},
            _group_labels,
        ),
    )


def make_optimizer(cfg: Any, steps_per_epoch: float, total_steps: int) -> tuple[optax.GradientTransformation, Schedule]:
    """Builds the optimizer of ``config.optim``; returns it and the schedule of the main lr."""
    name = cfg.name
    lr = make_schedule(cfg, float(cfg.lr), steps_per_epoch, total_steps)
    if name == "lars":
        lr_b = make_schedule(cfg, float(cfg.get("lr_biases", cfg.lr)), steps_per_epoch, total_steps)
        return lars(lr, lr_b, cfg.weight_decay, cfg.momentum, cfg.eta), lr
    if name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(cfg.weight_decay),
            optax.sgd(lr, momentum=cfg.momentum or None, nesterov=bool(cfg.get("nesterov", False))),
        )
        return tx, lr
    if name == "adamw":
        tx = optax.adamw(lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), weight_decay=cfg.weight_decay, mask=is_matrix)
        return tx, lr
    raise ConfigError(f"Unknown optimizer {name!r} in config.optim.name; choose lars, sgd or adamw.")
