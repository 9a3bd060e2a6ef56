"""Barlow Twins (Zbontar et al., ICML 2021), as in the SSL4EO review's reference code.

Each view goes through encoder and projector on its own (BatchNorm sees one view at a time, as the
official code's two forward calls), then ``losses.barlow_twins`` on the two embeddings. Reference
settings (ResNet-18, BigEarthNet): projector 2048-2048-2048 (Linear without bias, BN, ReLU; the final
BN without affine parameters is the batch standardisation inside the loss), lambda 0.0051, LARS.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses
from ssl4eo_jax.methods.base import MethodBase, Metrics, TrainLength, build_encoder, embedding_metrics
from ssl4eo_jax.methods.nets import EncoderHeads, forward_separate
from ssl4eo_jax.models.heads import MLP


class BarlowTwins(MethodBase):
    name = "barlow"

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.barlow
        self.lambd = float(cfg.lambd)
        self.encoder = build_encoder(config.model)
        projector = MLP(tuple(cfg.projector), use_bias=False, hidden_norm=True, last_norm="none",
                        dtype=self.encoder.dtype)
        self.net = EncoderHeads(self.encoder, projector)

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        outs, batch_stats = forward_separate(self.net, params, batch_stats, views[:2])
        z1, z2 = outs[0][1], outs[1][1]
        on_diag, off_diag = losses.barlow_twins_terms(z1, z2)
        loss = on_diag + self.lambd * off_diag
        metrics = {"on_diag": on_diag, "off_diag": off_diag, **embedding_metrics(z1)}
        return loss, (batch_stats, extra, metrics)
