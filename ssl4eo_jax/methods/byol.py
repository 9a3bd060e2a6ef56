"""BYOL (Grill et al., NeurIPS 2020), as deepmind-research/byol (``byol_experiment.py``).

* Online network: encoder, projector (Linear 4096 with bias, BN, ReLU, Linear 256 without bias) and
  predictor of the same shape (published sizes; kept for ResNet-18, whose head is then still far
  cheaper than its encoder). Target network: encoder and projector, an EMA of the online ones.
* Each view goes through each network on its own (BN per view, as the official two applies).
  Loss: ``(2 - 2 cos(p1, sg t2)) + (2 - 2 cos(p2, sg t1))``, mean over the batch.
* After the optimizer's update of step k the target moves to ``tau_k * target + (1 - tau_k) *
  online`` with ``tau_k = 1 - (1 - 0.996) (cos(pi k / K) + 1) / 2`` (K: total steps).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses
from ssl4eo_jax.methods.base import MethodBase, Metrics, TrainLength, build_encoder, embedding_metrics, require_length
from ssl4eo_jax.methods.nets import EncoderHeads, forward_separate
from ssl4eo_jax.methods.targets import ema, momentum_at
from ssl4eo_jax.models.heads import MLP


def without_predictor(tree: Any) -> Any:
    """The target network's part of the online variables: everything but the predictor."""
    return {k: v for k, v in tree.items() if k != "predictor"}


class BYOL(MethodBase):
    name = "byol"

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.byol
        self.length = require_length(length, self.name)
        self.momentum = float(cfg.momentum)
        self.momentum_schedule = str(cfg.momentum_schedule)
        self.encoder = build_encoder(config.model)
        dtype = self.encoder.dtype
        # utils/networks.py MLP: the hidden Linear has a bias, the output Linear none
        projector = MLP(tuple(cfg.projector), use_bias=True, last_bias=False, hidden_norm=True, dtype=dtype)
        predictor = MLP(tuple(cfg.predictor), use_bias=True, last_bias=False, hidden_norm=True, dtype=dtype)
        self.net = EncoderHeads(self.encoder, projector, predictor)

    def init(self, key: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        variables, _ = super().init(key, images)
        extra = {"target_params": without_predictor(variables["params"]),
                 "target_batch_stats": without_predictor(variables["batch_stats"])}
        return variables, extra

    def _momentum(self, step: jnp.ndarray) -> jnp.ndarray:
        return momentum_at(step, self.momentum, self.length.total_steps, self.momentum_schedule)

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        ((_, z1, p1), (_, _, p2)), batch_stats = forward_separate(self.net, params, batch_stats, views[:2])
        targets, target_stats = forward_separate(self.net, extra["target_params"], extra["target_batch_stats"],
                                                 views[:2], predict=False)
        loss = losses.byol(p1, p2, targets[0][1], targets[1][1])
        extra = {**extra, "target_batch_stats": target_stats}
        return loss, (batch_stats, extra, {"momentum": self._momentum(step), **embedding_metrics(z1)})

    def after_update(self, params: Any, extra: Any, step: jnp.ndarray) -> tuple[Any, Any]:
        target = ema(extra["target_params"], without_predictor(params), self._momentum(step))
        return params, {**extra, "target_params": target}
