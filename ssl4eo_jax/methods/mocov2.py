"""MoCo v2 (Chen et al. 2020), as the SSL4EO review's ``src/models/moco/builder.py``.

* Query network: encoder + MLP head (Linear 512->512 with bias, ReLU, Linear 512->128 with bias, no
  BN: the reference's ``--mlp`` ``fc`` replacement); key network: its momentum copy.
* Order within a step, as ``builder.forward``: the key network is first updated with the *current*
  query parameters (``m * key + (1 - m) * query``, m = 0.999 constant), then computes the keys of
  view 2; the loss is InfoNCE of the queries of view 1 against their keys and the queue (T = 0.2);
  then the keys of the whole global batch are enqueued at the pointer (the reference gathers all
  GPUs' keys first; under ``jit`` the keys are already the global batch), and the pointer moves on
  modulo K. K must be a multiple of the global batch (the reference asserts it). The queue starts
  as random unit vectors, as the reference's ``normalize(randn(dim, K))``.
* Shuffle-BN (``shuffle_bn=True``, the reference's DDP setting on 4 GPUs of 64 examples): both
  networks compute BN statistics over groups of ``bn_group_size`` consecutive examples (64: the
  reference's per-GPU batch; PyTorch DDP without SyncBN), and the key network sees the global batch
  randomly permuted first, so a query and its key (almost) never share BN statistics; the keys are
  then put back in order. The groups are virtual (``nets.forward_grouped``): the loss is the same on
  1, 2 or 8 devices and across processes. The permutation is a pure function of the seed and the
  step (random stream ``mocov2/shuffle_bn`` under the step's ``method`` key). BN running statistics are the mean over groups
  (DDP broadcasts rank 0's). ``shuffle_bn=False`` uses global BN statistics for both (MoCo v3's
  SyncBN).
* The loss is asymmetric (view 1 queries, view 2 keys), as MoCo v2.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses, rng
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods.base import MethodBase, Metrics, TrainLength, build_encoder, embedding_metrics
from ssl4eo_jax.methods.nets import EncoderHeads, ViewOutput, apply_train, forward_grouped
from ssl4eo_jax.methods.targets import ema, momentum_at
from ssl4eo_jax.models.heads import MLP


def enqueue(queue: jnp.ndarray, ptr: jnp.ndarray, keys: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Writes ``keys`` (B, D) into ``queue`` (K, D) at rows ``ptr:ptr+B``; returns the queue and the
    next pointer ((ptr + B) mod K; K is a multiple of B)."""
    size, batch = queue.shape[0], keys.shape[0]
    queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, jnp.zeros_like(ptr)))
    ptr = ptr + batch
    return queue, jnp.where(ptr >= size, 0, ptr).astype(jnp.int32)


class MoCoV2(MethodBase):
    name = "mocov2"

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.mocov2
        self.queue_size = int(cfg.queue_size)
        self.temperature = float(cfg.temperature)
        self.momentum = float(cfg.momentum)
        self.momentum_schedule = str(cfg.get("momentum_schedule", "constant"))
        self.total_steps = length.total_steps if length is not None else 1
        self.shuffle_bn = bool(cfg.shuffle_bn)
        self.group_size = int(cfg.get("bn_group_size", 64))
        batch = int(config.data.global_batch)
        if self.shuffle_bn and (self.group_size <= 0 or batch % self.group_size or batch // self.group_size < 2):
            raise ConfigError(
                f"config.mocov2.bn_group_size={self.group_size} must split the global batch ({batch}) into at least "
                f"2 equal BatchNorm groups for shuffle-BN; e.g. --config.mocov2.bn_group_size={max(1, batch // 4)} "
                "(or shuffle_bn=False)."
            )
        if self.queue_size <= 0 or self.queue_size % batch:
            raise ConfigError(
                f"config.mocov2.queue_size={self.queue_size} must be a positive multiple of the global batch "
                f"({batch}), as in the reference; e.g. {max(1, self.queue_size // batch) * batch}."
            )
        if self.momentum_schedule == "cosine" and length is None:
            raise ConfigError("config.mocov2.momentum_schedule='cosine' needs the training length (get_method(..., length)).")
        self.encoder = build_encoder(config.model)
        projector = MLP(tuple(cfg.projector), use_bias=True, hidden_norm=False, dtype=self.encoder.dtype)
        self.net = EncoderHeads(self.encoder, projector)

    def init(self, key: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        variables, _ = super().init(key, images)
        dim = self.net.projector.sizes[-1]
        queue = losses.l2_normalize(jax.random.normal(rng.derive(key, "mocov2/queue"), (self.queue_size, dim), jnp.float32))
        extra = {"key_params": variables["params"], "key_batch_stats": variables["batch_stats"], "queue": queue,
                 "queue_ptr": jnp.zeros((), jnp.int32)}
        return variables, extra

    def _forward(self, params: Any, batch_stats: Any, x: jnp.ndarray) -> tuple[ViewOutput, Any]:
        if self.shuffle_bn:
            return forward_grouped(self.net, params, batch_stats, x, self.group_size)
        return apply_train(self.net, params, batch_stats, x)

    @staticmethod
    def shuffle_permutation(key: jax.Array, batch: int) -> jnp.ndarray:
        """The key batch's permutation under the step's method ``key`` (the reference's
        ``_batch_shuffle_ddp``)."""
        return jax.random.permutation(rng.derive(key, "mocov2/shuffle_bn"), batch)

    def keys(self, key_params: Any, key_batch_stats: Any, images: jnp.ndarray, key: jax.Array
             ) -> tuple[jnp.ndarray, Any]:
        """Normalised keys (stop-gradient) of ``images`` in their original order, and the key
        network's new BN statistics; shuffled across BN groups first with shuffle-BN."""
        if self.shuffle_bn:
            perm = self.shuffle_permutation(key, images.shape[0])
            images = images[perm]
        (_, k, _), key_batch_stats = self._forward(key_params, key_batch_stats, images)
        if self.shuffle_bn:
            k = k[jnp.argsort(perm)]
        return jax.lax.stop_gradient(losses.l2_normalize(k)), key_batch_stats

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        m = momentum_at(step, self.momentum, self.total_steps, self.momentum_schedule)
        key_params = ema(extra["key_params"], params, m)
        (_, q, _), batch_stats = self._forward(params, batch_stats, views[0])
        k, key_batch_stats = self.keys(key_params, extra["key_batch_stats"], views[1], key)
        loss = losses.info_nce(q, k, extra["queue"], self.temperature)
        queue, ptr = enqueue(extra["queue"], extra["queue_ptr"], k)
        extra = {"key_params": key_params, "key_batch_stats": key_batch_stats, "queue": queue, "queue_ptr": ptr}
        return loss, (batch_stats, extra, {"momentum": m, **embedding_metrics(q)})
