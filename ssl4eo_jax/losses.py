"""Pure loss functions of the SSL methods, on batch-global arrays.

No state, no axis names: under ``jax.jit`` with batch-sharded inputs, means over the batch axis are
already global (XLA inserts the all-reduces), so every loss here is the loss of the global batch,
whatever the number of devices. Normalisations, temperatures and stop-gradients follow the
official code of each paper; each function is tested against an independent NumPy derivation.
"""

from __future__ import annotations

import jax.numpy as jnp

BN_EPSILON = 1e-5


def batch_standardize(z: jnp.ndarray, eps: float = BN_EPSILON) -> jnp.ndarray:
    """Per-dimension standardisation over the batch with the biased variance.

    This is ``BatchNorm1d(affine=False)`` in training mode, as in the official Barlow Twins code.
    """
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32))  # bf16 -> f32; f64 stays f64
    mean = jnp.mean(z, axis=0)
    var = jnp.mean(jnp.square(z - mean), axis=0)
    return (z - mean) / jnp.sqrt(var + eps)


def barlow_twins_terms(z1: jnp.ndarray, z2: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The invariance (on-diagonal) and redundancy (off-diagonal) terms of Barlow Twins."""
    n = z1.shape[0]
    c = batch_standardize(z1).T @ batch_standardize(z2) / n
    diag = jnp.diagonal(c)
    on_diag = jnp.sum(jnp.square(diag - 1.0))
    off_diag = jnp.sum(jnp.square(c * (1.0 - jnp.eye(c.shape[0], dtype=c.dtype))))
    return on_diag, off_diag


def barlow_twins(z1: jnp.ndarray, z2: jnp.ndarray, lambd: float = 0.0051) -> jnp.ndarray:
    """Barlow Twins (Zbontar et al., 2021): sum_i (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2.

    ``C`` is the cross-correlation of the two views' embeddings (N, D), each standardised per
    dimension over the (global) batch, divided by N. The reference code divides by
    ``batch_size * 4`` with the per-GPU batch and 4 GPUs hard-coded, which is this same N.
    """
    on_diag, off_diag = barlow_twins_terms(z1, z2)
    return on_diag + lambd * off_diag
