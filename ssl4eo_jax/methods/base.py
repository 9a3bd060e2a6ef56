"""What every SSL method provides to the training loop.

A method owns its networks (an encoder plus heads), its extra state (queues, EMA targets, centres)
and its loss. The training loop owns data, augmentation, the optimizer and checkpoints. Variables
follow one convention so that evaluators and exporters work for every method: the encoder's
parameters live at ``params["encoder"]`` and its BatchNorm statistics at
``batch_stats["encoder"]``.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from ssl4eo_jax.models.resnet import ResNet, resnet
from ssl4eo_jax.precision import compute_dtype

Metrics = dict[str, jnp.ndarray]


class Method(Protocol):
    name: str
    encoder: ResNet

    def init(self, rng: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        """Returns ``{"params": ..., "batch_stats": ...}`` and the method's extra state."""

    def loss(
        self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray
    ) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        """The loss of one global batch of views; aux = (new batch_stats, new extra, metrics)."""

    def after_update(self, params: Any, extra: Any, step: jnp.ndarray) -> Any:
        """Updates extra state from the new parameters (EMA targets); identity by default."""


def build_encoder(model_cfg: Any) -> ResNet:
    """The ResNet encoder of ``config.model``."""
    return resnet(
        model_cfg.name,
        stem=model_cfg.get("stem", "imagenet"),
        width=model_cfg.get("width", 64),
        zero_init_residual=model_cfg.get("zero_init_residual", False),
        dtype=compute_dtype(model_cfg.get("dtype", "auto")),
    )


def embedding_std(z: jnp.ndarray) -> jnp.ndarray:
    """Mean per-dimension std of L2-normalised embeddings; ~1/sqrt(D) when healthy, 0 at collapse."""
    z = z.astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.std(z, axis=0))
