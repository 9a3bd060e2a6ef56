"""MLP projection and prediction heads of the SSL methods."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssl4eo_jax import losses

from ssl4eo_jax.models.batchnorm import BatchNorm
from ssl4eo_jax.models.resnet import BN_EPSILON, BN_MOMENTUM

# PyTorch nn.Linear's default init: kaiming_uniform(a=sqrt(5)) == uniform(+-1/sqrt(fan_in)).
torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class MLP(nn.Module):
    """Linear -> [BN] -> ReLU blocks, then a final Linear (optionally followed by BN).

    ``sizes`` are the output sizes of every Linear layer, e.g. Barlow Twins' (2048, 2048, 2048).
    Attributes:
      use_bias: bias on the Linear layers (False where BN follows, as in Barlow Twins).
      hidden_norm: BatchNorm after each hidden Linear.
      last_norm: "none", "bn" (affine BN), "bn_noaffine" (SimSiam's last BN) or "bn_scale" (BN
        with a scale but no shift: SimCLR's last BN, ``center=False``) after the last Linear.
      activation: the hidden non-linearity (ReLU; DINO's head uses exact GELU).
      kernel_init: the Linear layers' initialiser (PyTorch's default; DINO: truncated normal 0.02).
    """

    sizes: Sequence[int]
    use_bias: bool = False
    hidden_norm: bool = True
    last_norm: str = "none"
    last_bias: bool | None = None
    activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    kernel_init: Callable[..., Any] = torch_linear_init
    dtype: Any = jnp.float32

    def _bn(self, train: bool, scale: bool, name: str, shift: bool | None = None) -> BatchNorm:
        return BatchNorm(
            use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
            use_scale=scale, use_bias=scale if shift is None else shift, dtype=self.dtype, param_dtype=jnp.float32,
            name=name,
        )

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        for i, size in enumerate(self.sizes[:-1]):
            x = nn.Dense(size, use_bias=self.use_bias, kernel_init=self.kernel_init, dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"linear{i}")(x)
            if self.hidden_norm:
                x = self._bn(train, True, f"bn{i}")(x)
            x = self.activation(x)
        last = len(self.sizes) - 1
        use_bias = self.use_bias if self.last_bias is None else self.last_bias
        x = nn.Dense(self.sizes[-1], use_bias=use_bias, kernel_init=self.kernel_init, dtype=self.dtype,
                     param_dtype=jnp.float32, name=f"linear{last}")(x)
        if self.last_norm == "bn":
            x = self._bn(train, True, f"bn{last}")(x)
        elif self.last_norm == "bn_noaffine":
            x = self._bn(train, False, f"bn{last}")(x)
        elif self.last_norm == "bn_scale":
            x = self._bn(train, True, f"bn{last}", shift=False)(x)
        elif self.last_norm != "none":
            raise ValueError(f"Unknown last_norm {self.last_norm!r}; use 'none', 'bn', 'bn_noaffine' or 'bn_scale'.")
        return x.astype(jnp.float32)


class WeightNormDense(nn.Module):
    """``weight_norm(nn.Linear(in, out, bias=False))`` with the gain initialised to 1 (DINO's last
    layer): each output unit's weight vector is ``g * v / ||v||``. With ``learn_gain=False`` (DINO's
    ``norm_last_layer``) the gain stays 1 and is not a parameter."""

    features: int
    learn_gain: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        v = self.param("kernel", torch_linear_init, (x.shape[-1], self.features), jnp.float32)
        w = losses.l2_normalize(v, axis=0)
        if self.learn_gain:
            w = w * self.param("gain", nn.initializers.ones, (self.features,), jnp.float32)
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype)).astype(jnp.float32)


class DINOHead(nn.Module):
    """DINO's head (facebookresearch/dino ``DINOHead``): an MLP (Linear, [BN], GELU) of ``hidden``
    sizes to a ``bottleneck``, L2-normalised, then a weight-normalised Linear to ``out_dim``.

    Returns (the L2-normalised bottleneck, the logits). Linear weights are truncated-normal with
    std 0.02 and zero biases, as the official ``_init_weights``; the last layer keeps PyTorch's
    default initialisation (it is created after ``_init_weights`` runs).
    """

    out_dim: int
    hidden: Sequence[int] = (2048, 2048)
    bottleneck: int = 256
    use_bn: bool = False
    norm_last_layer: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
        x = MLP(tuple(self.hidden) + (self.bottleneck,), use_bias=True, hidden_norm=self.use_bn,
                activation=lambda y: nn.gelu(y, approximate=False),
                kernel_init=nn.initializers.truncated_normal(0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02),
                dtype=self.dtype, name="mlp")(x, train=train)
        x = losses.l2_normalize(x)
        return x, WeightNormDense(self.out_dim, learn_gain=not self.norm_last_layer, dtype=self.dtype,
                                  name="last_layer")(x)
