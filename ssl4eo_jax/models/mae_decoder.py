"""MAE's lightweight decoder (facebookresearch/mae ``models_mae.py``, ``MaskedAutoencoderViT``'s
decoder half), and the random masking that decides what its encoder sees.

The decoder embeds the encoder's tokens (``decoder_embed``), appends one learned ``mask_token`` per
masked patch, puts every token back in its patch's place (``ids_restore``), adds fixed 2-D
sine-cosine position embeddings (``decoder_pos_embed``), runs pre-norm transformer blocks, a final
``decoder_norm`` and ``decoder_pred``: the pixels of each patch, (N, L, p*p*C).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl4eo_jax.models.vit import Block, ViT, dense, layer_norm, sincos_pos_embed


def random_masking(key: jax.Array, batch: int, length: int, ratio: float) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """MAE's ``random_masking``: per image, uniform noise sorted; the first ``int(L (1 - ratio))``
    patches of the shuffle are kept. Returns (ids_keep (N, keep), ids_restore (N, L), mask (N, L):
    1 for masked patches, 0 for kept ones, in the original patch order)."""
    keep = int(length * (1 - ratio))
    noise = jax.random.uniform(key, (batch, length))
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    mask = jnp.ones((batch, length), jnp.float32).at[:, :keep].set(0.0)
    return ids_shuffle[:, :keep], ids_restore, jnp.take_along_axis(mask, ids_restore, axis=1)


class MAEDecoder(nn.Module):
    """The decoder: ``dim`` wide, ``depth`` blocks of ``heads`` heads, predicting ``patch_pixels``
    values (p * p * bands) per patch of a ``grid`` x ``grid`` image."""

    dim: int
    depth: int
    heads: int
    grid: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latent: jnp.ndarray, ids_restore: jnp.ndarray, patch_pixels: int) -> jnp.ndarray:
        x = dense(self.dim, self.dtype, "decoder_embed", "xavier")(latent)
        batch, length = ids_restore.shape
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.dim), jnp.float32)
        masked = jnp.broadcast_to(mask_token.astype(x.dtype), (batch, length + 1 - x.shape[1], self.dim))
        patches = jnp.concatenate([x[:, 1:], masked], axis=1)
        patches = jnp.take_along_axis(patches, ids_restore[:, :, None], axis=1)  # unshuffle
        pos = self.param("decoder_pos_embed", lambda *_: jnp.asarray(sincos_pos_embed(self.dim, self.grid)),
                         (1, 1 + self.grid**2, self.dim), jnp.float32)
        x = jnp.concatenate([x[:, :1], patches], axis=1) + pos.astype(x.dtype)
        for i in range(self.depth):
            x = Block(self.dim, self.heads, 4.0, self.dtype, "xavier", name=f"decoder_blocks_{i}")(x)
        x = layer_norm(self.dtype, "decoder_norm")(x)
        return dense(patch_pixels, self.dtype, "decoder_pred", "xavier")(x)[:, 1:].astype(jnp.float32)


class MaskedAutoencoder(nn.Module):
    """A ViT encoder on the kept patches and the decoder; ``params["encoder"]``, ``params["decoder"]``.
    Without ``ids_keep`` (initialisation) every patch is kept."""

    encoder: ViT
    decoder: MAEDecoder

    def __call__(self, x: jnp.ndarray, train: bool = True, ids_keep: jnp.ndarray | None = None,
                 ids_restore: jnp.ndarray | None = None) -> jnp.ndarray:
        if ids_keep is None:
            length = self.decoder.grid**2
            ids_keep = ids_restore = jnp.broadcast_to(jnp.arange(length), (x.shape[0], length))
        pixels = self.encoder.patch_size**2 * x.shape[-1]
        return self.decoder(self.encoder.tokens(x, ids_keep), ids_restore, pixels)
