"""SimSiam (Chen & He, CVPR 2021), as the SSL4EO review's ``src/models/simsiam/builder.py``.

* Projector: 3 layers, Linear without bias + BN + ReLU twice (512 wide for ResNet-18: the encoder's
  feature size), then Linear to ``dim`` = 2048 and BN without affine parameters (the reference's
  last Linear has a frozen bias that the BN removes, so it has none here).
* Predictor: Linear 2048->512 without bias, BN, ReLU, Linear 512->2048 with bias.
* Each view goes through the network on its own (BN per view, SyncBN over the global batch);
  loss ``-(cos(p1, sg z2) + cos(p2, sg z1)) / 2``.
* ``fix_pred_lr``: the predictor keeps the base learning rate while the rest follows the schedule
  (the reference sets it for ResNet-50 only).
* The encoder zero-initialises the last BN of each residual block (``zero_init_residual=True``):
  set in ``configs/simsiam.py`` through ``config.model``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses
from ssl4eo_jax.methods.base import MethodBase, Metrics, TrainLength, build_encoder, embedding_metrics, group_labels
from ssl4eo_jax.methods.nets import EncoderHeads, forward_separate
from ssl4eo_jax.models.heads import MLP
from ssl4eo_jax.optim import ParamGroup, ParamGroups


class SimSiam(MethodBase):
    name = "simsiam"

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.simsiam
        self.fix_pred_lr = bool(cfg.fix_pred_lr)
        self.encoder = build_encoder(config.model)
        dtype = self.encoder.dtype
        projector = MLP(tuple(cfg.projector), use_bias=False, hidden_norm=True, last_norm="bn_noaffine", dtype=dtype)
        predictor = MLP(tuple(cfg.predictor), use_bias=False, last_bias=True, hidden_norm=True, dtype=dtype)
        self.net = EncoderHeads(self.encoder, projector, predictor)

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        ((_, z1, p1), (_, z2, p2)), batch_stats = forward_separate(self.net, params, batch_stats, views[:2])
        loss = losses.simsiam(p1, p2, z1, z2)
        return loss, (batch_stats, extra, embedding_metrics(z1))

    def param_groups(self) -> ParamGroups | None:
        if not self.fix_pred_lr:
            return None
        return ParamGroups(lambda p: group_labels(p, {"predictor": "predictor"}),
                           {"predictor": ParamGroup(constant_lr=True)})
