"""The encoder-with-heads network of the methods, and the three ways its views go through it.

How BatchNorm sees the views is part of each method's recipe:

* ``forward_separate``: one pass per view, BN statistics of each view alone (the official code of
  Barlow Twins, SimSiam, BYOL, VICReg, MoCo's query and key encoders).
* ``forward_joint``: views of one size go through the encoder together and the heads see every
  view at once, so BN statistics cover all views (SwAV's and DINO's multi-crop forward, SimCLR's
  concatenated batch). Views are interleaved along the batch (``stack(..., 1).reshape``), never
  concatenated along the sharded batch axis; the heads act on a (B, V, D) array.
* ``forward_per_device``: one view inside ``jax.shard_map`` over the ``data`` axis, so BN
  statistics are those of each device's shard (PyTorch DDP without SyncBN: MoCo's shuffle-BN).
  On one device this is plain BN over the batch.

Under ``jit`` with a batch-sharded input, BN outside ``shard_map`` computes global (SyncBN)
statistics, whatever the number of devices.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ssl4eo_jax.models.resnet import ResNet
from ssl4eo_jax.sharding import DATA_AXIS

# (pooled encoder features, projector output, predictor output or None) of one view.
ViewOutput = tuple[jnp.ndarray, Any, Any]


class EncoderHeads(nn.Module):
    """encoder -> projector [-> predictor]; parameters at "encoder", "projector", "predictor"."""

    encoder: ResNet
    projector: nn.Module
    predictor: nn.Module | None = None

    def encode(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        return self.encoder(x, train=train)

    def heads(self, h: jnp.ndarray, train: bool = True, predict: bool = True) -> tuple[Any, Any]:
        z = self.projector(h, train=train)
        p = self.predictor(z, train=train) if predict and self.predictor is not None else None
        return z, p

    def __call__(self, x: jnp.ndarray, train: bool = True, predict: bool = True) -> ViewOutput:
        h = self.encode(x, train)
        return (h, *self.heads(h, train, predict))


def apply_train(net: nn.Module, params: Any, batch_stats: Any, x: Any, method: str | None = None, **kwargs: Any
                ) -> tuple[Any, Any]:
    """``net`` in training mode; returns (output, updated batch_stats)."""
    out, updates = net.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"],
                             method=method, **kwargs)
    return out, updates["batch_stats"]


def forward_separate(net: nn.Module, params: Any, batch_stats: Any, views: Sequence[jnp.ndarray], **kwargs: Any
                     ) -> tuple[list[ViewOutput], Any]:
    """One training-mode pass per view, BN statistics of each view alone."""
    outs = []
    for view in views:
        out, batch_stats = apply_train(net, params, batch_stats, view, **kwargs)
        outs.append(out)
    return outs, batch_stats


def _size_groups(views: Sequence[jnp.ndarray]) -> list[list[jnp.ndarray]]:
    """Consecutive views of equal shape (the official multi-crop ``unique_consecutive``)."""
    groups: list[list[jnp.ndarray]] = []
    for view in views:
        if groups and groups[-1][0].shape == view.shape:
            groups[-1].append(view)
        else:
            groups.append([view])
    return groups


def forward_joint(net: nn.Module, params: Any, batch_stats: Any, views: Sequence[jnp.ndarray], **kwargs: Any
                  ) -> tuple[list[ViewOutput], Any]:
    """The encoder once per group of equal-size views, the heads once over all views: BN
    statistics over every view of a group (encoder) and over all views (heads)."""
    feats = []
    for group in _size_groups(views):
        x = jnp.stack(group, axis=1)  # (B, g, H, W, C): each example's views stay on its device
        h, batch_stats = apply_train(net, params, batch_stats, x.reshape((-1,) + x.shape[2:]), method="encode")
        feats.append(h.reshape(x.shape[0], len(group), -1))
    h = jnp.concatenate(feats, axis=1)  # (B, V, D), concatenated along the unsharded view axis
    (z, p), batch_stats = apply_train(net, params, batch_stats, h, method="heads", **kwargs)
    pick = lambda tree, v: jax.tree.map(lambda t: t[:, v], tree)  # noqa: E731
    return [(h[:, v], pick(z, v), pick(p, v)) for v in range(h.shape[1])], batch_stats


def forward_per_device(net: nn.Module, params: Any, batch_stats: Any, x: jnp.ndarray, mesh: jax.sharding.Mesh,
                       **kwargs: Any) -> tuple[ViewOutput, Any]:
    """A training-mode pass with per-device BN statistics (``shard_map`` over ``data``); the new
    running statistics are the mean over devices (DDP keeps rank 0's; the mean is that of the
    global batch's means)."""

    def local(params: Any, batch_stats: Any, x: jnp.ndarray) -> tuple[ViewOutput, Any]:
        out, new_stats = apply_train(net, params, batch_stats, x, **kwargs)
        return out, jax.lax.pmean(new_stats, DATA_AXIS)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)), out_specs=(P(DATA_AXIS), P()))(
        params, batch_stats, x)
