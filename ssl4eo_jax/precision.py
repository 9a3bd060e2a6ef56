"""Mixed precision: bfloat16 compute with float32 parameters, optimizer state and loss reductions.

``config.model.dtype`` is ``auto`` (bfloat16 on GPU and TPU, float32 on CPU, where bfloat16 is
emulated and slow), ``float32`` or ``bfloat16``. Only activations and matmul/conv inputs use it:
parameters are created in float32 (``param_dtype``), BatchNorm statistics and every loss are
reduced in float32, heads return float32, and the optimizer updates float32 parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl4eo_jax.errors import ConfigError


def compute_dtype(name: str) -> jnp.dtype:
    """The activation dtype for ``config.model.dtype``."""
    if name == "auto":
        return jnp.dtype(jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32)
    if name not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"config.model.dtype={name!r}; use auto, float32 or bfloat16.")
    return jnp.dtype(name)
