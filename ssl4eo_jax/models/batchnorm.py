"""BatchNorm with PyTorch's semantics, in Flax's variable layout.

``flax.linen.BatchNorm`` differs from ``torch.nn.BatchNorm{1,2}d`` in one way that matters when we
claim to train like the official PyTorch code: its running variance averages the *biased* batch
variance, PyTorch's the *unbiased* one (``n / (n - 1)`` times larger; 6 % for a 16-example head
batch, or for ResNet-18's last stage at 32 px where the feature map is 1x1). This module normalises
with the biased variance and tracks the unbiased one, as PyTorch does, with Flax's names
(``scale``/``bias`` parameters, ``mean``/``var`` statistics), so checkpoints and the PyTorch
interop keep their layout. Statistics are computed in float32 (two passes) whatever the compute
dtype; the running statistics are not updated during ``init``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm`` over every axis but the last (features).

    Attributes:
      use_running_average: evaluation mode (normalise with the running statistics).
      momentum: the share of the old running statistics that is kept (0.9 = PyTorch's momentum 0.1).
      epsilon: added to the variance.
      use_scale, use_bias: the affine parameters (PyTorch's ``affine``; SimCLR's last BN has a
        scale and no shift).
      dtype: the output dtype; parameters and statistics are float32.
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scale_init: Callable[..., Any] = nn.initializers.ones
    bias_init: Callable[..., Any] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        features = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        xf = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                running_mean.value = m * running_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
                running_var.value = m * running_var.value + (1.0 - m) * jax.lax.stop_gradient(unbiased)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (features,), self.param_dtype)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (features,), self.param_dtype)
        return y.astype(self.dtype)
