"""The encoder-with-heads network of the methods, and the three ways its views go through it.

How BatchNorm sees the views is part of each method's recipe:

* ``forward_separate``: one pass per view, BN statistics of each view alone (the official code of
  Barlow Twins, SimSiam, BYOL, VICReg, MoCo's query and key encoders).
* ``forward_joint``: views of one size go through the encoder together and the heads see every
  view at once, so BN statistics cover all views (SwAV's and DINO's multi-crop forward, SimCLR's
  concatenated batch). Views are interleaved along the batch (``stack(..., 1).reshape``), never
  concatenated along the sharded batch axis; the heads act on a (B, V, D) array.
* ``forward_grouped``: BN statistics of each group of ``group_size`` consecutive examples, like
  PyTorch DDP without SyncBN on ``global_batch / group_size`` GPUs (MoCo's shuffle-BN). The groups
  are virtual: they do not depend on how many devices run the step.

Under ``jit`` with a batch-sharded input, BN computes global (SyncBN) statistics, whatever the
number of devices: no method's result depends on the device count.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.models.resnet import ResNet

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
    # a module without BatchNorm (a ViT encoder) has no statistics to update: keep its empty entry
    return out, {**batch_stats, **updates.get("batch_stats", {})}


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


def forward_grouped(net: nn.Module, params: Any, batch_stats: Any, x: jnp.ndarray, group_size: int,
                    **kwargs: Any) -> tuple[ViewOutput, Any]:
    """A training-mode pass with BN statistics of each group of ``group_size`` consecutive examples
    (``vmap`` over groups); the new running statistics are the mean over groups of each group's
    update (DDP keeps rank 0's; the mean over groups has the global batch's mean)."""
    batch = x.shape[0]
    if batch % group_size:
        raise ConfigError(f"The batch of {batch} does not split into BatchNorm groups of {group_size}; "
                          f"use a global batch that is a multiple of {group_size}.")
    groups = x.reshape((batch // group_size, group_size) + x.shape[1:])
    out, stats = jax.vmap(lambda g: apply_train(net, params, batch_stats, g, **kwargs))(groups)
    out = jax.tree.map(lambda t: t.reshape((batch,) + t.shape[2:]), out)
    return out, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
