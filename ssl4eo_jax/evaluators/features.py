"""Frozen-encoder features of whole splits, computed on the mesh in global batches."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssl4eo_jax import augment, sharding
from ssl4eo_jax.data.pipeline import eval_batches
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.evaluators.encoders import Encoder
from ssl4eo_jax.models.resnet import BN_MOMENTUM
from ssl4eo_jax.progress import progress as progress_bar


@dataclasses.dataclass
class Features:
    """Features of one split with its labels (host numpy arrays, padding removed)."""

    x: np.ndarray  # (N, D) float32
    label: np.ndarray  # (N,) int32, -1 where absent
    multi_hot: np.ndarray  # (N, K) float32


def eval_preprocess(mean: np.ndarray, std: np.ndarray, crop_fraction: float, size: int,
                    bands: Callable[[jnp.ndarray], jnp.ndarray] | None = None) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Normalisation, the band mapping to the encoder's bands (``transfer.BandMap.apply``; None: the
    data's bands as they are) and the deterministic evaluation view (centre crop, resize)."""
    mean_j, std_j = jnp.asarray(mean), jnp.asarray(std)

    def preprocess(images: jnp.ndarray) -> jnp.ndarray:
        x = augment.normalize(images, mean_j, std_j)
        return augment.center_crop_resize(bands(x) if bands is not None else x, crop_fraction, size)

    return preprocess


class FrozenEncoder:
    """Jitted inference-mode features and train-mode BatchNorm statistics of one encoder
    architecture and one evaluation view; compiled once, used for any variables and split."""

    def __init__(self, encoder: Encoder, preprocess: Callable[[jnp.ndarray], jnp.ndarray], mesh: jax.sharding.Mesh,
                 global_batch: int):
        self.mesh = mesh
        self.global_batch = global_batch

        @jax.jit
        def forward(variables: dict[str, Any], images: jnp.ndarray) -> jnp.ndarray:
            return encoder.apply(variables, preprocess(images), train=False)

        @jax.jit
        def batch_stats(variables: dict[str, Any], images: jnp.ndarray) -> Any:
            _, updates = encoder.apply(variables, preprocess(images), train=True, mutable=["batch_stats"])
            return updates.get("batch_stats", {})

        self._forward, self._batch_stats = forward, batch_stats

    def features(self, variables: dict[str, Any], source: SplitSource, desc: str = "features",
                 progress: bool = True) -> Features:
        """Pooled features of every patch of ``source`` with the encoder in inference mode."""
        variables = sharding.replicate(variables, self.mesh)
        xs, labels, multi, masks = [], [], [], []
        per_process = -(-len(source) // jax.process_count())
        n_batches = -(-per_process // sharding.local_batch_size(self.global_batch))
        for batch in progress_bar(eval_batches(source, self.global_batch, self.mesh), total=n_batches, desc=desc,
                              disable=not progress or jax.process_index() != 0, leave=False):
            xs.append(self._forward(variables, batch["image"]))
            labels.append(batch["label"])
            multi.append(batch["multi_hot"])
            masks.append(batch["mask"])
        keep = np.concatenate([sharding.to_host(m) for m in masks]) > 0
        return Features(
            x=np.concatenate([sharding.to_host(x) for x in xs])[keep].astype(np.float32),
            label=np.concatenate([sharding.to_host(y) for y in labels])[keep],
            multi_hot=np.concatenate([sharding.to_host(y) for y in multi])[keep],
        )

    def recompute_batch_stats(self, variables: dict[str, Any], source: SplitSource, max_batches: int = 20
                              ) -> dict[str, Any]:
        """BatchNorm running statistics re-estimated as the plain average of batch statistics.

        For a randomly initialised encoder, whose stored statistics (mean 0, variance 1) are
        meaningless: this gives it the same "BN statistics from the data" that the reference
        protocol's train-mode BN gives it, so the random-init baseline is not handicapped. An
        encoder without BatchNorm (a ViT) is returned as it is.
        """
        if not jax.tree.leaves(variables.get("batch_stats", {})):
            return variables
        variables = sharding.replicate(variables, self.mesh)
        # With momentum m, one update from the stored statistics s0 gives m*s0 + (1-m)*batch; undo it.
        momentum = BN_MOMENTUM
        total, count = None, 0
        for batch in eval_batches(source, self.global_batch, self.mesh):
            if count >= max_batches:
                break
            if sharding.to_host(batch["mask"]).min() < 1 and count > 0:
                continue  # a padded final batch would bias the statistics
            updated = self._batch_stats(variables, batch["image"])
            stats = jax.tree.map(lambda new, old: (new - momentum * old) / (1 - momentum), updated,
                                 variables["batch_stats"])
            total = stats if total is None else jax.tree.map(jnp.add, total, stats)
            count += 1
        averaged = jax.tree.map(lambda t: t / count, total)
        return {"params": variables["params"], "batch_stats": averaged}
