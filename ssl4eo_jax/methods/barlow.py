"""Barlow Twins (Zbontar et al., ICML 2021), as in the SSL4EO review's reference code.

Each view goes through encoder and projector on its own (BatchNorm sees one view at a time, as the
official code's two forward calls), then ``losses.barlow_twins`` on the two embeddings. Reference
settings (ResNet-18, BigEarthNet): projector 2048-2048-2048 (Linear without bias, BN, ReLU; the final
BN without affine parameters is the batch standardisation inside the loss), lambda 0.0051, LARS.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl4eo_jax import losses
from ssl4eo_jax.methods.base import Metrics, build_encoder, embedding_std
from ssl4eo_jax.models.heads import MLP
from ssl4eo_jax.models.resnet import ResNet


class EncoderProjector(nn.Module):
    """encoder -> projector; returns (pooled features, embeddings)."""

    encoder: ResNet
    projector: MLP

    def __call__(self, x: jnp.ndarray, train: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
        h = self.encoder(x, train=train)
        return h, self.projector(h, train=train)


class BarlowTwins:
    name = "barlow"

    def __init__(self, config: Any):
        cfg = config.barlow
        self.lambd = float(cfg.lambd)
        self.encoder = build_encoder(config.model)
        self.projector = MLP(tuple(cfg.projector), use_bias=False, hidden_norm=True, last_norm="none",
                             dtype=self.encoder.dtype)
        self.net = EncoderProjector(self.encoder, self.projector)

    def init(self, rng: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        variables = self.net.init(rng, images, train=True)
        return {"params": variables["params"], "batch_stats": variables["batch_stats"]}, {}

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray
             ) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        zs = []
        for view in views[:2]:
            (_, z), updates = self.net.apply(
                {"params": params, "batch_stats": batch_stats}, view, train=True, mutable=["batch_stats"]
            )
            batch_stats = updates["batch_stats"]
            zs.append(z)
        on_diag, off_diag = losses.barlow_twins_terms(zs[0], zs[1])
        loss = on_diag + self.lambd * off_diag
        metrics = {"on_diag": on_diag, "off_diag": off_diag, "embedding_std": embedding_std(zs[0])}
        return loss, (batch_stats, extra, metrics)

    def after_update(self, params: Any, extra: Any, step: jnp.ndarray) -> Any:
        return extra
