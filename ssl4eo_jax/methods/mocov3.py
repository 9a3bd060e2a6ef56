"""MoCo v3 (Chen, Xie & He, ICCV 2021), as facebookresearch/moco-v3 ``moco/builder.py``
(``MoCo_ViT``) and ``main_moco.py`` with its ViT recipe.

* Base encoder: the ViT (class token) + projector ``_build_mlp(3, D, 4096, 256)``: Linear (no bias) ->
  BN -> ReLU, twice, -> Linear -> BN without affine; predictor ``_build_mlp(2, 256, 4096, 256)``:
  Linear -> BN -> ReLU -> Linear -> BN without affine (``MoCo_ViT`` keeps ``last_bn=True``; only
  ``MoCo_ResNet``'s predictor drops the last BN). Momentum encoder: the ViT and projector, an EMA of
  the base ones (BN statistics its own, in training mode), no queue.
* Each view goes through each network on its own (SyncBN statistics of one view's global batch).
  Loss ``ctr(q1, k2) + ctr(q2, k1)``: InfoNCE against the global batch's keys at temperature T
  (0.2 for ViTs), times 2T (``losses.mocov3``).
* Momentum ``m_t = 1 - (1 - m) (cos(pi t / T) + 1) / 2`` (``adjust_moco_momentum``, ``--moco-m-cos``;
  m = 0.99 for ViTs), per iteration. The official code moves the momentum encoder with ``m_t``
  *before* iteration t's forward, onto the base encoder as iteration t-1's update left it; here
  ``after_update`` of step t-1 does that same move with ``m_t``.
* ``--stop-grad-conv1``: the patch projection stays at its random initialisation (the paper's
  stability fix); the 2-D sine-cosine position embeddings are fixed (``requires_grad=False``). Both
  are frozen parameter groups: no update, no weight decay. AdamW decays every other parameter,
  biases and norms included (the official ``AdamW(model.parameters(), ...)``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses
from ssl4eo_jax.methods.base import (
    MethodBase,
    Metrics,
    TrainLength,
    build_encoder,
    embedding_metrics,
    group_labels,
    require_length,
)
from ssl4eo_jax.methods.byol import without_predictor
from ssl4eo_jax.methods.nets import EncoderHeads, forward_separate
from ssl4eo_jax.methods.targets import ema, momentum_at
from ssl4eo_jax.models.heads import MLP
from ssl4eo_jax.models.vit import ViT
from ssl4eo_jax.optim import ParamGroup, ParamGroups

FROZEN_PATCH_PROJECTION = ("encoder/patch_embed",)
FROZEN_POSITION_EMBEDDINGS = ("encoder/pos_embed",)


def frozen_groups(prefixes: tuple[str, ...]) -> ParamGroups | None:
    """Parameter groups that freeze the parameters under ``prefixes`` for the whole run."""
    if not prefixes:
        return None
    return ParamGroups(lambda p: group_labels(p, {prefix: "frozen" for prefix in prefixes}),
                       {"frozen": ParamGroup(frozen=True)})


def fixed_encoder_parts(encoder: Any, stop_grad_patch: bool = False) -> tuple[str, ...]:
    """The encoder parameters a ViT recipe never trains: sine-cosine position embeddings (MAE,
    MoCo v3) and, with ``stop_grad_patch``, the patch projection (MoCo v3's ``--stop-grad-conv1``)."""
    if not isinstance(encoder, ViT):
        return ()
    fixed = FROZEN_POSITION_EMBEDDINGS if encoder.pos_embed == "sincos" else ()
    return fixed + (FROZEN_PATCH_PROJECTION if stop_grad_patch else ())


class MoCoV3(MethodBase):
    name = "mocov3"

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.mocov3
        self.length = require_length(length, self.name)
        self.temperature = float(cfg.temperature)
        self.momentum = float(cfg.momentum)
        self.encoder = build_encoder(config.model)
        self.frozen = fixed_encoder_parts(self.encoder, bool(cfg.stop_grad_patch))
        dtype = self.encoder.dtype
        mlp, dim = int(cfg.mlp_dim), int(cfg.dim)
        projector = MLP((mlp, mlp, dim), use_bias=False, hidden_norm=True, last_norm="bn_noaffine", dtype=dtype)
        predictor = MLP((mlp, dim), use_bias=False, hidden_norm=True, last_norm="bn_noaffine", dtype=dtype)
        self.net = EncoderHeads(self.encoder, projector, predictor)

    def init(self, key: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        variables, _ = super().init(key, images)
        extra = {"momentum_params": without_predictor(variables["params"]),
                 "momentum_batch_stats": without_predictor(variables["batch_stats"])}
        return variables, extra

    def _momentum(self, step: jnp.ndarray) -> jnp.ndarray:
        return momentum_at(step, self.momentum, self.length.total_steps, "cosine")

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        ((_, z1, q1), (_, _, q2)), batch_stats = forward_separate(self.net, params, batch_stats, views[:2])
        keys, momentum_stats = forward_separate(self.net, extra["momentum_params"], extra["momentum_batch_stats"],
                                                views[:2], predict=False)
        loss = losses.mocov3(q1, q2, keys[0][1], keys[1][1], self.temperature)
        extra = {**extra, "momentum_batch_stats": momentum_stats}
        return loss, (batch_stats, extra, {"momentum": self._momentum(step), **embedding_metrics(z1)})

    def after_update(self, params: Any, extra: Any, step: jnp.ndarray) -> tuple[Any, Any]:
        # the official update at the start of iteration step + 1, with that iteration's momentum
        target = ema(extra["momentum_params"], without_predictor(params), self._momentum(step + 1))
        return params, {**extra, "momentum_params": target}

    def param_groups(self) -> ParamGroups | None:
        return frozen_groups(self.frozen)
