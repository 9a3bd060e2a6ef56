"""MoCo v3's and MAE's losses against float64 NumPy re-derivations of the official code
(facebookresearch/moco-v3 ``moco/builder.py`` ``MoCo.contrastive_loss`` / ``forward``;
facebookresearch/mae ``models_mae.py`` ``patchify`` / ``forward_loss``): values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpy_losses as ref
import pytest
from test_losses import check_gradients, finite_differences, normal

from ssl4eo_jax import losses


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.2), (8, 16, 0.2), (5, 4, 1.0)])
def test_mocov3_matches_numpy(x64, n, d, t):
    rng = np.random.default_rng(n * d)
    q1, q2, k1, k2 = (normal(rng, n, d, scale=s) for s in (2.0, 0.5, 1.0, 3.0))
    got = losses.mocov3(q1, q2, k1, k2, t)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), ref.mocov3(q1, q2, k1, k2, t), rtol=1e-10)


def test_mocov3_gradients_flow_into_queries_only(x64):
    rng = np.random.default_rng(7)
    args = [normal(rng, 4, 3) for _ in range(4)]
    check_gradients(lambda *a: losses.mocov3(*a, 0.2), lambda *a: ref.mocov3(*a, 0.2), args, frozen=(2, 3))


def test_mocov3_is_the_2t_scaled_in_batch_info_nce(x64):
    # The official loss is InfoNCE with the other keys of the batch as negatives, times 2T: with
    # perfectly aligned, orthogonal views it approaches 0, with identical keys it is 2T log N per term.
    n, t = 6, 0.2
    q = np.eye(n) * 50.0
    assert float(losses.mocov3(q, q, q, q, 0.01)) < 1e-30
    np.testing.assert_allclose(float(losses.mocov3(q, q, q, q, t)), 2 * 2 * t * np.log1p((n - 1) * np.exp(-1 / t)),
                               rtol=1e-12)
    same = np.ones((n, n))
    np.testing.assert_allclose(float(losses.mocov3(same, same, same, same, t)), 2 * 2 * t * np.log(n), rtol=1e-12)


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("n,size,c,patch", [(2, 8, 3, 4), (3, 12, 2, 4), (1, 8, 13, 8)])
def test_mae_matches_numpy(x64, norm_pix, n, size, c, patch):
    rng = np.random.default_rng(size * c + patch)
    imgs = rng.normal(size=(n, c, size, size)) * 2.0 + 1.0  # NCHW, as the official code
    length = (size // patch) ** 2
    pred = rng.normal(size=(n, length, patch * patch * c))
    mask = (rng.uniform(size=(n, length)) < 0.75).astype(np.float64)
    mask[:, 0] = 1.0  # at least one masked patch per image
    target = losses.patchify(jnp.asarray(imgs.transpose(0, 2, 3, 1)), patch)  # our NHWC layout
    got = losses.mae(pred, target, mask, norm_pix)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), ref.mae(pred, imgs, mask, patch, norm_pix), rtol=1e-10)


def test_mae_gradient_flows_into_the_masked_predictions_only(x64):
    rng = np.random.default_rng(3)
    n, c, size, patch = 2, 2, 4, 2
    imgs = rng.normal(size=(n, c, size, size))
    target = losses.patchify(jnp.asarray(imgs.transpose(0, 2, 3, 1)), patch)
    pred = rng.normal(size=(n, 4, patch * patch * c))
    mask = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    grad_pred, grad_target = jax.grad(lambda p, t: losses.mae(p, t, mask, True), argnums=(0, 1))(
        jnp.asarray(pred), target)
    assert np.all(np.asarray(grad_target) == 0), "the target is stop-gradient"
    assert np.all(np.asarray(grad_pred)[mask == 0] == 0), "visible patches carry no loss"
    num = finite_differences(lambda p: ref.mae(p, imgs, mask, patch, True), pred)
    np.testing.assert_allclose(np.asarray(grad_pred), num, rtol=1e-5, atol=1e-8)


def test_patchify_orders_patches_row_major_and_pixels_row_column_channel():
    img = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    patches = np.asarray(losses.patchify(jnp.asarray(img), 2))
    assert patches.shape == (2, 4, 12)
    # patch 1 is the top-right 2x2 block; its pixels in (row, column, channel) order
    np.testing.assert_array_equal(patches[0, 1], img[0, 0:2, 2:4].reshape(-1))
    np.testing.assert_array_equal(patches[1, 2], img[1, 2:4, 0:2].reshape(-1))
