"""MLP projection and prediction heads of the SSL methods."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssl4eo_jax.models.resnet import BN_EPSILON, BN_MOMENTUM

# PyTorch nn.Linear's default init: kaiming_uniform(a=sqrt(5)) == uniform(+-1/sqrt(fan_in)).
torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class MLP(nn.Module):
    """Linear -> [BN] -> ReLU blocks, then a final Linear (optionally followed by BN).

    ``sizes`` are the output sizes of every Linear layer, e.g. Barlow Twins' (2048, 2048, 2048).
    Attributes:
      use_bias: bias on the Linear layers (False where BN follows, as in Barlow Twins).
      hidden_norm: BatchNorm after each hidden Linear.
      last_norm: "none", "bn" (affine BN) or "bn_noaffine" (SimSiam's last BN) after the last Linear.
    """

    sizes: Sequence[int]
    use_bias: bool = False
    hidden_norm: bool = True
    last_norm: str = "none"
    last_bias: bool | None = None
    dtype: Any = jnp.float32

    def _bn(self, train: bool, affine: bool, name: str) -> nn.BatchNorm:
        return nn.BatchNorm(
            use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
            use_scale=affine, use_bias=affine, dtype=self.dtype, param_dtype=jnp.float32, name=name,
        )

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        for i, size in enumerate(self.sizes[:-1]):
            x = nn.Dense(size, use_bias=self.use_bias, kernel_init=torch_linear_init, dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"linear{i}")(x)
            if self.hidden_norm:
                x = self._bn(train, True, f"bn{i}")(x)
            x = nn.relu(x)
        last = len(self.sizes) - 1
        use_bias = self.use_bias if self.last_bias is None else self.last_bias
        x = nn.Dense(self.sizes[-1], use_bias=use_bias, kernel_init=torch_linear_init, dtype=self.dtype,
                     param_dtype=jnp.float32, name=f"linear{last}")(x)
        if self.last_norm == "bn":
            x = self._bn(train, True, f"bn{last}")(x)
        elif self.last_norm == "bn_noaffine":
            x = self._bn(train, False, f"bn{last}")(x)
        elif self.last_norm != "none":
            raise ValueError(f"Unknown last_norm {self.last_norm!r}; use 'none', 'bn' or 'bn_noaffine'.")
        return x.astype(jnp.float32)
