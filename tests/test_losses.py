"""Barlow Twins loss against an independent NumPy implementation of the paper's formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl4eo_jax import losses


def numpy_barlow_twins(z1: np.ndarray, z2: np.ndarray, lambd: float) -> float:
    """Zbontar et al. 2021, Eq. 1-2, with BatchNorm1d(affine=False) standardisation (eps 1e-5)."""
    n, d = z1.shape

    def bn(z):
        mu = z.sum(0) / n
        var = ((z - mu) ** 2).sum(0) / n  # biased, as BatchNorm in training mode
        return (z - mu) / np.sqrt(var + 1e-5)

    a, b = bn(z1), bn(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("n,d,lambd", [(8, 5, 0.0051), (16, 7, 0.1), (5, 12, 1.0)])
def test_barlow_twins_matches_numpy(x64, n, d, lambd):
    rng = np.random.default_rng(n * d)
    z1 = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d)
    z2 = 0.5 * z1 + rng.normal(size=(n, d))
    expected = numpy_barlow_twins(z1, z2, lambd)
    got = losses.barlow_twins(jnp.asarray(z1, jnp.float64), jnp.asarray(z2, jnp.float64), lambd)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_barlow_twins_properties():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
    # Perfectly correlated, decorrelated dimensions: near-zero invariance term.
    on, _ = losses.barlow_twins_terms(z, 3.0 * z + 1.0)
    assert float(on) < 1e-3
    # Independent views: C ~ 0, the invariance term is ~D.
    other = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
    on, off = losses.barlow_twins_terms(z, other)
    assert 12 < float(on) < 20 and float(off) > 0
    # Invariant to per-dimension affine maps of either view (standardisation inside).
    scale = jnp.asarray(rng.uniform(0.1, 10, size=16), jnp.float32)
    a = losses.barlow_twins(z, other)
    b = losses.barlow_twins(z * scale + 5.0, other)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-4)


def test_barlow_twins_gradient_matches_finite_differences(x64):
    rng = np.random.default_rng(1)
    z1 = jnp.asarray(rng.normal(size=(6, 4)))
    z2 = jnp.asarray(rng.normal(size=(6, 4)))
    grad = jax.grad(losses.barlow_twins)(z1, z2, 0.3)
    eps = 1e-6
    num = np.zeros(z1.shape)
    for idx in np.ndindex(*z1.shape):
        d = np.zeros(z1.shape)
        d[idx] = eps
        num[idx] = (losses.barlow_twins(z1 + d, z2, 0.3) - losses.barlow_twins(z1 - d, z2, 0.3)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(grad), num, rtol=1e-5, atol=1e-7)
