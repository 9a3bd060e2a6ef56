"""Linear probe on frozen features, trained on the device with optax.

Features are standardised with the training split's mean and std (a parameter-free BatchNorm: MAE's
linear-probe head ``BatchNorm1d(affine=False)`` + ``Linear``, with the whole split's statistics),
then one linear layer is trained with AdamW and a cosine schedule: softmax cross-entropy for
single-label data, sigmoid binary cross-entropy for multi-label data. The weight decay is chosen
from a grid on the validation split; all grid points train at once (``vmap``) in one jitted scan.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl4eo_jax import rng


@dataclasses.dataclass
class LinearProbe:
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # (D, K)
    bias: np.ndarray  # (K,)
    weight_decay: float
    multi_label: bool

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax) or per-class probabilities (sigmoid)."""
        logits = ((x - self.mean) / self.std) @ self.weights + self.bias
        return np.asarray(head_scores(jnp.asarray(logits), self.multi_label))


def classification_loss(logits: jnp.ndarray, targets: jnp.ndarray, multi_label: bool) -> jnp.ndarray:
    """Softmax cross-entropy on one-hot targets, or sigmoid BCE on multi-hot targets averaged over
    classes and examples (== PyTorch's ``MultiLabelSoftMarginLoss``, the reference's loss)."""
    if multi_label:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def head_scores(logits: jnp.ndarray, multi_label: bool) -> jnp.ndarray:
    """Class probabilities (softmax) or per-class probabilities (sigmoid)."""
    return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1)


def _loss(params: dict[str, jnp.ndarray], x: jnp.ndarray, y: jnp.ndarray, multi_label: bool) -> jnp.ndarray:
    return classification_loss(x @ params["w"] + params["b"], y, multi_label)


@functools.partial(jax.jit, static_argnames=("epochs", "batch", "multi_label"))
def _train(x: jnp.ndarray, y: jnp.ndarray, weight_decays: jnp.ndarray, key: jax.Array, epochs: int, batch: int,
           lr: float, multi_label: bool) -> dict[str, jnp.ndarray]:
    n, d = x.shape
    k = y.shape[1]
    steps_per_epoch = max(1, n // batch)
    batch = min(batch, n)
    schedule = optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)

    def train_one(wd: jnp.ndarray) -> dict[str, jnp.ndarray]:
        tx = optax.adamw(schedule, weight_decay=wd)
        params = {"w": jnp.zeros((d, k)), "b": jnp.zeros((k,))}
        opt = tx.init(params)

        def epoch(carry, epoch_key):
            def step(carry, idx):
                params, opt = carry
                grads = jax.grad(_loss)(params, x[idx], y[idx], multi_label)
                updates, opt = tx.update(grads, opt, params)
                return (optax.apply_updates(params, updates), opt), None

            perm = jax.random.permutation(epoch_key, n)[: steps_per_epoch * batch].reshape(steps_per_epoch, batch)
            return jax.lax.scan(step, carry, perm)[0], None

        (params, _), _ = jax.lax.scan(epoch, (params, opt), jax.random.split(key, epochs))
        return params

    return jax.vmap(train_one)(weight_decays)


def train_linear_probe(
    train_x: np.ndarray, train_targets: np.ndarray, val_x: np.ndarray, val_targets: np.ndarray,
    val_metric: Any, multi_label: bool, weight_decays: Sequence[float] = (0.0, 1e-4, 1e-3, 1e-2),
    epochs: int = 100, batch: int = 256, lr: float = 1e-3, seed: int = 0,
) -> tuple[LinearProbe, dict[float, float]]:
    """Trains probes for every weight decay; returns the best on validation and all val scores.

    ``train_targets`` are one-hot (single-label) or multi-hot rows; ``val_metric(scores)`` returns
    the validation score to maximise.
    """
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0) + 1e-6
    xs = jnp.asarray((train_x - mean) / std, jnp.float32)
    params = _train(xs, jnp.asarray(train_targets, jnp.float32), jnp.asarray(weight_decays, jnp.float32),
                    rng.stream(seed, "linear_probe"), epochs, batch, lr, multi_label)
    params = jax.tree.map(np.asarray, params)
    val_scores, probes = {}, []
    for i, wd in enumerate(weight_decays):
        probe = LinearProbe(mean, std, params["w"][i], params["b"][i], float(wd), multi_label)
        val_scores[float(wd)] = float(val_metric(probe.scores(val_x)))
        probes.append(probe)
    best = int(np.argmax([val_scores[float(wd)] for wd in weight_decays]))
    return probes[best], val_scores
