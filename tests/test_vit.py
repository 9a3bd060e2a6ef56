"""The ViT encoder and MAE's pieces against exact expectations: the official sine-cosine table,
position-embedding resampling, MAE's random masking and the decoder's unshuffling (a NumPy
re-derivation of ``models_mae.py`` ``random_masking`` / ``forward_decoder``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods.base import build_encoder, init_encoder
from ssl4eo_jax.models.mae_decoder import MAEDecoder, random_masking
from ssl4eo_jax.models.vit import resample_pos_embed, sincos_pos_embed

TINY_VIT = {"name": "vit_tiny", "patch_size": 8, "img_size": 32, "depth": 2, "dtype": "float32"}


def mae_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """facebookresearch/mae ``util/pos_embed.py`` ``get_2d_sincos_pos_embed(..., cls_token=True)``, literally."""

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


@pytest.mark.parametrize("dim,grid", [(8, 2), (192, 4), (384, 14)])
def test_sincos_table_is_maes(dim, grid):
    np.testing.assert_allclose(sincos_pos_embed(dim, grid)[0], mae_sincos(dim, grid), rtol=1e-6, atol=1e-7)


def test_resampling_position_embeddings():
    pos = jnp.asarray(np.random.default_rng(0).normal(size=(1, 1 + 16, 6)), jnp.float32)
    assert resample_pos_embed(pos, (4, 4)) is pos  # same grid: untouched
    constant = jnp.ones((1, 17, 6)).at[:, 0].set(5.0)
    out = resample_pos_embed(constant, (6, 6))
    assert out.shape == (1, 37, 6)
    np.testing.assert_allclose(np.asarray(out[0, 0]), 5.0)  # the class token's is kept
    np.testing.assert_allclose(np.asarray(out[0, 1:]), 1.0, rtol=1e-6)  # a constant field stays constant
    with pytest.raises(ConfigError, match="not a square grid"):
        resample_pos_embed(jnp.ones((1, 1 + 6, 4)), (3, 3))


def test_vit_runs_at_other_input_sizes_and_pools():
    cfg = ml_collections.ConfigDict(TINY_VIT)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 13))
    token = build_encoder(cfg)
    variables = init_encoder(token, jax.random.key(1), x)
    assert variables["batch_stats"] == {}
    tokens = token.apply(variables, x, method="tokens")
    assert tokens.shape == (2, 17, 192)
    np.testing.assert_array_equal(token.apply(variables, x), tokens[:, 0])
    cfg.pool = "mean"
    np.testing.assert_allclose(build_encoder(cfg).apply(variables, x), tokens[:, 1:].mean(1), rtol=1e-6)
    assert token.apply(variables, jnp.ones((2, 48, 48, 13))).shape == (2, 192)  # 6 x 6 patches


def test_the_encoder_sees_only_the_kept_patches():
    encoder = build_encoder(ml_collections.ConfigDict(TINY_VIT))
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    variables = init_encoder(encoder, jax.random.key(1), x)
    keep = jnp.array([[5, 0, 10]])
    changed = x.at[:, 16:24, 16:24].set(9.0)  # patch 2 * 4 + 2 = 10 is kept ...
    moved = x.at[:, 0:8, 8:16].set(9.0)  # ... patch 1 is not
    a, b, c = (encoder.apply(variables, v, keep, method="tokens") for v in (x, changed, moved))
    assert a.shape == (1, 4, 192)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_random_masking_keeps_a_quarter_and_restores_the_order():
    keep, restore, mask = random_masking(jax.random.key(3), 5, 16, 0.75)
    keep, restore, mask = np.asarray(keep), np.asarray(restore), np.asarray(mask)
    assert keep.shape == (5, 4) and restore.shape == (5, 16)
    np.testing.assert_array_equal(mask.sum(1), 12)
    for k, r, m in zip(keep, restore, mask):
        assert len(set(k)) == 4 and np.all(m[k] == 0)
        shuffle = np.argsort(r)  # ids_restore = argsort(ids_shuffle)
        np.testing.assert_array_equal(shuffle[:4], k)
    a, b = random_masking(jax.random.key(4), 5, 16, 0.75)[0], random_masking(jax.random.key(5), 5, 16, 0.75)[0]
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # a new mask per key


def test_decoder_puts_tokens_back_in_their_patches():
    """``forward_decoder`` without blocks: embed, mask tokens appended, unshuffled, + position, norm,
    pred; re-derived per patch in NumPy."""
    grid, dim, latent_dim, pixels = 2, 8, 6, 5
    decoder = MAEDecoder(dim, 0, 2, grid)
    rng = np.random.default_rng(0)
    keep, restore, mask = (np.asarray(a) for a in random_masking(jax.random.key(0), 2, grid * grid, 0.5))
    latent = rng.normal(size=(2, 1 + keep.shape[1], latent_dim)).astype(np.float32)
    variables = decoder.init(jax.random.key(1), latent, restore, pixels)
    variables = jax.tree.map(lambda v: v + rng.normal(size=v.shape).astype(np.float32) * 0.1, variables)
    got = np.asarray(decoder.apply(variables, latent, restore, pixels))
    p = jax.tree.map(np.asarray, variables["params"])
    for n in range(2):
        for j in range(grid * grid):
            if mask[n, j] == 0:
                token = latent[n, 1 + list(keep[n]).index(j)] @ p["decoder_embed"]["kernel"] + p["decoder_embed"]["bias"]
            else:
                token = p["mask_token"][0, 0]
            token = token + p["decoder_pos_embed"][0, 1 + j]
            normed = (token - token.mean()) / np.sqrt(token.var() + 1e-6)
            normed = normed * p["decoder_norm"]["scale"] + p["decoder_norm"]["bias"]
            expected = normed @ p["decoder_pred"]["kernel"] + p["decoder_pred"]["bias"]
            np.testing.assert_allclose(got[n, j], expected, rtol=1e-4, atol=1e-5)
