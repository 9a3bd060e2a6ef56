"""Momentum (EMA) target networks: the update and the momentum schedules.

MoCo's key encoder, BYOL's target and DINO's teacher are exponential moving averages of the
online network's *parameters*; their BatchNorm statistics are their own (the targets run in
training mode on their own views, as in the official code, which averages ``parameters()`` only).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax.errors import ConfigError


def ema(target: Any, online: Any, momentum: jnp.ndarray | float) -> Any:
    """``momentum * target + (1 - momentum) * online`` per leaf, stop-gradient."""
    online = jax.lax.stop_gradient(online)
    return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


def cosine_momentum(step: jnp.ndarray, base: float, total_steps: int, final: float = 1.0) -> jnp.ndarray:
    """BYOL's ``1 - (1 - base) (cos(pi k / K) + 1) / 2`` (Grill et al. 2020, Sec. 3.2), which is DINO's
    per-iteration ``cosine_scheduler(base, final=1, epochs, niter)``: ``base`` at step 0, ``final``
    at ``total_steps`` (and after)."""
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(1, total_steps), 0.0, 1.0)
    return final + 0.5 * (base - final) * (1.0 + jnp.cos(math.pi * progress))


def momentum_at(step: jnp.ndarray, base: float, total_steps: int, schedule: str) -> jnp.ndarray:
    """The target momentum of ``schedule`` ("constant": MoCo-v2's fixed m; "cosine": BYOL/DINO)."""
    if schedule == "constant":
        return jnp.asarray(base, jnp.float32)
    if schedule == "cosine":
        return cosine_momentum(step, base, total_steps)
    raise ConfigError(f"Unknown momentum schedule {schedule!r}; use 'constant' or 'cosine'.")
