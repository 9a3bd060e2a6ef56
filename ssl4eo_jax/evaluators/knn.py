"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO).

Features are L2-normalised; the k most cosine-similar training patches vote with weight
``exp(similarity / temperature)``. Single-label: the class scores are the summed weights per class.
Multi-label: the score of each class is the weighted average of the neighbours' multi-hot labels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_chunk(query: jnp.ndarray, bank: jnp.ndarray, bank_targets: jnp.ndarray, k: int, temperature: float) -> jnp.ndarray:
    sims = _l2_normalize(query) @ _l2_normalize(bank).T
    top_sims, top_idx = jax.lax.top_k(sims, k)
    weights = jnp.exp(top_sims / temperature)
    votes = bank_targets[top_idx]  # (Q, k, K)
    scores = jnp.einsum("qk,qkc->qc", weights, votes)
    return scores / jnp.sum(weights, axis=1, keepdims=True)


def knn_scores(
    train_x: np.ndarray, train_targets: np.ndarray, query_x: np.ndarray, k: int = 20,
    temperature: float = 0.07, chunk: int = 256,
) -> np.ndarray:
    """Class scores (Q, K) for ``query_x`` from the training features and targets (N, K).

    ``train_targets`` are one-hot rows for single-label data and multi-hot rows for multi-label
    data; the scores are normalised by the total weight, so multi-label scores lie in [0, 1].
    """
    k = min(k, train_x.shape[0])
    bank = jnp.asarray(train_x, jnp.float32)
    targets = jnp.asarray(train_targets, jnp.float32)
    out = []
    for start in range(0, query_x.shape[0], chunk):
        out.append(np.asarray(_knn_chunk(jnp.asarray(query_x[start : start + chunk], jnp.float32), bank, targets, k, temperature)))
    return np.concatenate(out) if out else np.zeros((0, train_targets.shape[1]), np.float32)
