"""SimCLR (Chen et al., ICML 2020), as google-research/simclr (v1 ``model_util.projection_head``,
``objective.add_contrastive_loss``).

* Projector (``proj_head_mode='nonlinear'``): Linear without bias + BN (affine) + ReLU, then
  Linear to 128 without bias + BN with a scale but no shift (``center=False``). The published
  hidden width is the encoder's (2048 for ResNet-50); we keep 2048 for ResNet-18 too.
* Both views go through the network together (the official concatenates them along the batch), so
  BN statistics cover both views, over the global batch (the official ``global_bn``).
* Loss: NT-Xent over the 2N views at temperature 0.1 (the official default; ``losses.nt_xent``'s
  0.5 is the paper's CIFAR setting), as the official *sum* of the two views' mean losses, i.e.
  ``2 * losses.nt_xent``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses
from ssl4eo_jax.methods.base import MethodBase, Metrics, TrainLength, build_encoder, embedding_metrics
from ssl4eo_jax.methods.nets import EncoderHeads, forward_joint
from ssl4eo_jax.models.heads import MLP


class SimCLR(MethodBase):
    name = "simclr"

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.simclr
        self.temperature = float(cfg.temperature)
        self.encoder = build_encoder(config.model)
        projector = MLP(tuple(cfg.projector), use_bias=False, hidden_norm=True, last_norm="bn_scale",
                        dtype=self.encoder.dtype)
        self.net = EncoderHeads(self.encoder, projector)

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        ((_, z1, _), (_, z2, _)), batch_stats = forward_joint(self.net, params, batch_stats, views[:2])
        loss = 2.0 * losses.nt_xent(z1, z2, self.temperature)
        return loss, (batch_stats, extra, embedding_metrics(z1))
