"""SwAV (Caron et al., NeurIPS 2020), as the SSL4EO review's ``src/bigearthnet_B12_swav_train.py``
and ``src/models/swav/resnet50.py`` (facebookresearch/swav).

* Head: Linear 512->2048 with bias, BN, ReLU, Linear 2048->128 with bias; L2-normalised; prototypes
  are a bias-free Linear 128->K (K = 500 for ResNet-18 on BigEarthNet) whose weight vectors are kept
  unit-norm (the reference normalises them at the start of every iteration; here at
  initialisation and after every update that changed them, which gives the same weights at every
  forward pass).
* Multi-crop forward: crops of one size go through the encoder together and the head sees all
  crops, so BN statistics cover every crop (the reference's concatenated forward). The reference
  ResNet-18 run uses 2 crops; ``aug.local_views`` adds small crops.
* Codes: Sinkhorn-Knopp (epsilon 0.05, 3 iterations) on the scores of the crops for assignment (the
  2 global crops), over the global batch; swapped prediction at temperature 0.1.
* Queue: from epoch ``epoch_queue_starts`` (15), each crop for assignment keeps the projections of
  its last ``queue_length`` (1280) examples, newest first (the reference's shift); its scores
  against the current prototypes are prepended to the batch's for the codes only once the queue is
  full (the reference's ``use_the_queue``), and the queue is filled after the loss.
* The prototypes get no update of any kind during the first ``freeze_prototypes_niters`` (313)
  steps (the reference sets their gradients to None: no step, no weight decay, no momentum).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
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
from ssl4eo_jax.methods.nets import forward_joint
from ssl4eo_jax.models.heads import MLP, torch_linear_init
from ssl4eo_jax.models.resnet import ResNet
from ssl4eo_jax.optim import ParamGroup, ParamGroups


class SwAVNet(nn.Module):
    """encoder -> projector -> L2 norm -> prototypes; parameters at "encoder", "projector",
    "prototypes" (a (D, K) kernel whose columns are the prototypes)."""

    encoder: ResNet
    projector: MLP
    prototypes: nn.Module

    def encode(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        return self.encoder(x, train=train)

    def heads(self, h: jnp.ndarray, train: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
        z = losses.l2_normalize(self.projector(h, train=train))
        return z, self.prototypes(z).astype(jnp.float32)

    def __call__(self, x: jnp.ndarray, train: bool = True) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        h = self.encode(x, train)
        return (h, *self.heads(h, train))


def normalize_prototypes(params: Any) -> Any:
    """``params`` with every prototype (a column of the kernel) scaled to unit L2 norm."""
    kernel = params["prototypes"]["kernel"]
    return {**params, "prototypes": {"kernel": losses.l2_normalize(kernel, axis=0).astype(kernel.dtype)}}


def push_queue(queue: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """The reference's shift: the batch's projections (B, D) in front, the oldest rows dropped."""
    return jnp.concatenate([z.astype(queue.dtype), queue], axis=0)[: queue.shape[0]]


class SwAV(MethodBase):
    name = "swav"

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.swav
        length = require_length(length, self.name)
        self.temperature = float(cfg.temperature)
        self.epsilon = float(cfg.epsilon)
        self.sinkhorn_iterations = int(cfg.sinkhorn_iterations)
        self.n_assign = int(cfg.crops_for_assign)
        self.queue_length = int(cfg.queue_length)
        self.queue_start = length.steps(float(cfg.epoch_queue_starts))
        self.freeze_steps = int(cfg.freeze_prototypes_niters)
        self.encoder = build_encoder(config.model)
        dtype = self.encoder.dtype
        projector = MLP((int(cfg.hidden_mlp), int(cfg.feat_dim)), use_bias=True, hidden_norm=True, dtype=dtype)
        prototypes = nn.Dense(int(cfg.prototypes), use_bias=False, kernel_init=torch_linear_init, dtype=dtype,
                              param_dtype=jnp.float32)
        self.feat_dim = int(cfg.feat_dim)
        self.net = SwAVNet(self.encoder, projector, prototypes)

    def init(self, key: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        variables, _ = super().init(key, images)
        extra = {}  # queue_length 0 (the reference's ResNet-50 runs): no queue in the state
        if self.queue_length > 0:
            extra = {
                "queue": jnp.zeros((self.n_assign, self.queue_length, self.feat_dim), jnp.float32),
                "queue_filled": jnp.zeros((), jnp.int32),  # rows written so far, at most queue_length
            }
        return {**variables, "params": normalize_prototypes(variables["params"])}, extra

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        outs, batch_stats = forward_joint(self.net, params, batch_stats, views)
        zs = [z for _, z, _ in outs]
        scores = [s for _, _, s in outs]
        args = (self.temperature, self.epsilon, self.sinkhorn_iterations, self.n_assign)
        if self.queue_length > 0:
            queue, filled = extra["queue"], extra["queue_filled"]
            use_queue = filled >= self.queue_length

            def with_queue(scores: list[jnp.ndarray]) -> jnp.ndarray:
                prototypes = jax.lax.stop_gradient(params["prototypes"]["kernel"]).astype(jnp.float32)
                return losses.swav(scores, *args, queue_scores=[queue[i] @ prototypes for i in range(self.n_assign)])

            loss = jax.lax.cond(use_queue, with_queue, lambda s: losses.swav(s, *args), scores)
            started = step >= self.queue_start
            pushed = jnp.stack([push_queue(queue[i], jax.lax.stop_gradient(zs[i])) for i in range(self.n_assign)])
            queue = jnp.where(started, pushed, queue)
            filled = jnp.where(started, jnp.minimum(filled + zs[0].shape[0], self.queue_length), filled)
            metrics = {"queue_used": use_queue.astype(jnp.float32)}
            extra = {"queue": queue, "queue_filled": filled.astype(jnp.int32)}
        else:
            loss, metrics = losses.swav(scores, *args), {}
        return loss, (batch_stats, extra, {**metrics, **embedding_metrics(zs[0])})

    def after_update(self, params: Any, extra: Any, step: jnp.ndarray) -> tuple[Any, Any]:
        """Re-normalises the prototypes once updates reach them (they do not change while frozen)."""
        normalized = normalize_prototypes(params)
        return jax.tree.map(lambda n, p: jnp.where(step >= self.freeze_steps, n, p), normalized, params), extra

    def param_groups(self) -> ParamGroups | None:
        if self.freeze_steps <= 0:
            return None
        return ParamGroups(lambda p: group_labels(p, {"prototypes": "prototypes"}),
                           {"prototypes": ParamGroup(frozen_steps=self.freeze_steps)})
