"""VICReg (Bardes et al., ICLR 2022), as facebookresearch/vicreg ``main_vicreg.py``.

* Expander: (Linear with bias + BN + ReLU) per hidden layer, then a Linear without bias. Published
  8192-8192-8192 for ResNet-50 (2048 features); for ResNet-18 (512 features) the default is
  2048-2048-2048, the size the SSL4EO review's Barlow Twins uses on ResNet-18 (Barlow's projector is
  VICReg's expander up to its biases) and 4x the encoder width as the published 8192 is for 2048.
* Each view goes through the network on its own; loss ``25 * invariance + 25 * variance +
  1 * covariance`` over the global batch (the official gathers all GPUs' embeddings).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses
from ssl4eo_jax.methods.base import MethodBase, Metrics, TrainLength, build_encoder, embedding_metrics
from ssl4eo_jax.methods.nets import EncoderHeads, forward_separate
from ssl4eo_jax.models.heads import MLP


class VICReg(MethodBase):
    name = "vicreg"

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.vicreg
        self.coeffs = (float(cfg.sim_coeff), float(cfg.std_coeff), float(cfg.cov_coeff))
        self.encoder = build_encoder(config.model)
        projector = MLP(tuple(cfg.projector), use_bias=True, last_bias=False, hidden_norm=True,
                        dtype=self.encoder.dtype)
        self.net = EncoderHeads(self.encoder, projector)

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        ((_, z1, _), (_, z2, _)), batch_stats = forward_separate(self.net, params, batch_stats, views[:2])
        loss = losses.vicreg(z1, z2, *self.coeffs)
        return loss, (batch_stats, extra, embedding_metrics(z1))
