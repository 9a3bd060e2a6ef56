"""Vision transformers (ViT-Tiny/Small/Base) in Flax linen, for any number of input bands.

The layout is timm's ``VisionTransformer`` (and so the SSL4EO-S12 / torchgeo ViT weights'): a
``patch_embed`` convolution with bias (kernel = stride = patch size), a class token, learned
position embeddings for the class token and every patch (``pos_embed``, shape (1, 1 + N, D)),
pre-norm blocks (``norm1`` -> ``attn.qkv`` / ``attn.proj`` -> residual, ``norm2`` -> ``mlp.fc1`` ->
exact GELU -> ``mlp.fc2`` -> residual; LayerNorm epsilon 1e-6) and a final ``norm``. Dropout and
drop-path are not used (timm's defaults, and our methods' official recipes at this scale except
DINO's drop-path 0.1, which its config names as a difference).

Inputs are NHWC arrays already normalised per band. ``__call__`` returns the pooled feature (N, D)
in float32: the class token after the final norm (``pool="token"``, timm's default and the
evaluation of MoCo-v3, DINO and MAE's linear probe) or the mean of the normed patch tokens
(``pool="mean"``). ``tokens`` returns every token, optionally of a subset of patches only (MAE's
encoder sees the visible patches). When the input's patch grid differs from ``img_size``'s, the
position embeddings are resampled to it (``jax.image.resize`` "cubic": Keys' kernel with a = -0.5;
timm's ``dynamic_img_size`` uses PyTorch's bicubic, a = -0.75, so the two differ slightly then).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl4eo_jax.errors import ConfigError

LN_EPSILON = 1e-6
# name: (embedding dim, depth, heads, default patch size). vit_tiny is timm's ViT-Ti (DeiT-Ti).
VIT_SIZES = {"vit_tiny": (192, 12, 3, 16), "vit_s16": (384, 12, 6, 16), "vit_b16": (768, 12, 12, 16)}
POOLS = ("token", "mean")


def is_vit(name: str) -> bool:
    return name in VIT_SIZES


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """The fixed 2-D sine-cosine position embeddings of MAE (``util/pos_embed.py``
    ``get_2d_sincos_pos_embed``) and MoCo-v3: half the channels encode the row, half the column,
    each as ``[sin(pos * omega), cos(pos * omega)]`` with ``omega = 1 / 10000^(k / (D/4))``; the
    class token's is zero. Returns (1, [1 +] grid^2, dim) float32."""
    if dim % 4:
        raise ConfigError(f"Sine-cosine position embeddings need an embedding dim divisible by 4, not {dim}.")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    # MAE: grid = meshgrid(grid_w, grid_h); emb_h encodes grid[0] (the column), emb_w grid[1] (the row).
    # (MoCo-v3's build_2d_sincos_position_embedding puts the row first: the same values, halves swapped.)
    col, row = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="xy")

    def encode(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([encode(col), encode(row)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb[None].astype(np.float32)


def resample_pos_embed(pos_embed: jnp.ndarray, grid: tuple[int, int], prefix_tokens: int = 1) -> jnp.ndarray:
    """``pos_embed`` (1, prefix + h*w, D) resampled (cubic, a = -0.5) to a ``grid`` of patches (the prefix,
    the class token's, is kept); the identity when the grid already matches."""
    n = pos_embed.shape[1] - prefix_tokens
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ConfigError(f"pos_embed has {n} patch positions, not a square grid; cannot resample it to {grid}.")
    if (side, side) == tuple(grid):
        return pos_embed
    prefix, patches = pos_embed[:, :prefix_tokens], pos_embed[:, prefix_tokens:]
    patches = patches.reshape(1, side, side, -1)
    patches = jax.image.resize(patches.astype(jnp.float32), (1, *grid, patches.shape[-1]), "cubic")
    return jnp.concatenate([prefix, patches.reshape(1, grid[0] * grid[1], -1).astype(pos_embed.dtype)], axis=1)


def dense(features: int, dtype: Any, name: str, weight_init: str) -> nn.Dense:
    kernel_init = (nn.initializers.xavier_uniform() if weight_init == "xavier"
                   else nn.initializers.truncated_normal(0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02))
    return nn.Dense(features, kernel_init=kernel_init, bias_init=nn.initializers.zeros, dtype=dtype,
                    param_dtype=jnp.float32, name=name)


def layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
    """timm's ``Attention``: one ``qkv`` Linear (with bias), scaled dot-product softmax, ``proj``."""

    dim: int
    heads: int
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, t, _ = x.shape
        head_dim = self.dim // self.heads
        qkv = dense(3 * self.dim, self.dtype, "qkv", self.weight_init)(x)
        qkv = qkv.reshape(b, t, 3, self.heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, hd)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, self.dim)
        return dense(self.dim, self.dtype, "proj", self.weight_init)(out)


class Mlp(nn.Module):
    hidden: int
    dim: int
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.gelu(dense(self.hidden, self.dtype, "fc1", self.weight_init)(x), approximate=False)
        return dense(self.dim, self.dtype, "fc2", self.weight_init)(x)


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    dim: int
    heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x + Attention(self.dim, self.heads, self.dtype, self.weight_init, name="attn")(layer_norm(self.dtype, "norm1")(x))
        y = Mlp(int(self.dim * self.mlp_ratio), self.dim, self.dtype, self.weight_init, name="mlp")(
            layer_norm(self.dtype, "norm2")(x))
        return x + y


class ViT(nn.Module):
    """A timm-layout vision transformer encoder that returns a pooled feature per image.

    Attributes:
      dim, depth, heads, mlp_ratio: the transformer's size (ViT-S/16: 384, 12, 6, 4).
      patch_size: pixels per patch side; img_size: the input size the position embeddings are for.
      pool: "token" (the class token) or "mean" (mean of the patch tokens), both after the norm.
      pos_embed: "learned" (truncated normal 0.02, timm/DINO) or "sincos" (MAE's and MoCo-v3's fixed
        2-D sine-cosine values; the methods freeze it).
      weight_init: "xavier" (MAE, MoCo v3: xavier-uniform Linear weights and patch projection, class
        token normal 0.02) or "trunc_normal" (DINO: Linear weights and class token truncated normal
        0.02, the patch projection PyTorch's default).
      dtype: the computation dtype (bfloat16 for mixed precision); parameters stay float32.
    """

    dim: int
    depth: int
    heads: int
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    pool: str = "token"
    pos_embed: str = "learned"
    weight_init: str = "xavier"
    dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"config.model.pool={self.pool!r}; use one of {', '.join(POOLS)}.")
        if self.img_size % self.patch_size:
            raise ConfigError(f"config.model.img_size={self.img_size} is not a multiple of the patch size "
                              f"{self.patch_size}.")
        p = self.patch_size
        # MAE / MoCo-v3 initialise the patch projection like a Linear layer on flattened patches
        # (xavier_uniform on view(D, -1)); its fan-in/fan-out are C*p*p and D for the (p, p, C, D) kernel.
        # DINO keeps PyTorch's default Conv2d initialisation there: uniform(+-1/sqrt(fan_in)).
        conv_init = (nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3) if self.weight_init == "xavier"
                     else nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"))
        self.patch_embed = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", use_bias=True,
                                   kernel_init=conv_init, dtype=self.dtype, param_dtype=jnp.float32)
        # MAE: normal(0.02) (MoCo v3: 1e-6); DINO: truncated normal 0.02
        cls_init = (nn.initializers.normal(0.02) if self.weight_init == "xavier"
                    else nn.initializers.truncated_normal(0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02))
        self.cls_token = self.param("cls_token", cls_init, (1, 1, self.dim), jnp.float32)
        grid = self.img_size // p
        if self.pos_embed == "sincos":
            init = lambda *_: jnp.asarray(sincos_pos_embed(self.dim, grid))  # noqa: E731
        elif self.pos_embed == "learned":
            init = nn.initializers.truncated_normal(0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02)
        else:
            raise ConfigError(f"config.model.pos_embed={self.pos_embed!r}; use 'learned' or 'sincos'.")
        self.pos_embed_param = self.param("pos_embed", init, (1, 1 + grid * grid, self.dim), jnp.float32)
        self.blocks = [Block(self.dim, self.heads, self.mlp_ratio, self.dtype, self.weight_init,
                             name=f"blocks_{i}")
                       for i in range(self.depth)]
        self.norm = layer_norm(self.dtype, "norm")

    def patches(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(patch tokens with their position embeddings (B, N, D), the class token's (1, 1, D))."""
        x = self.patch_embed(x.astype(self.dtype))
        b, gh, gw, d = x.shape
        pos = resample_pos_embed(self.pos_embed_param, (gh, gw))
        x = x.reshape(b, gh * gw, d) + pos[:, 1:].astype(self.dtype)
        return x, (self.cls_token + pos[:, :1]).astype(self.dtype)

    def tokens(self, x: jnp.ndarray, keep: jnp.ndarray | None = None) -> jnp.ndarray:
        """Every token after the final norm (B, 1 + N, D), float32; with ``keep`` (B, n) indices of
        patches, only those (MAE's visible patches), in that order, after the class token."""
        x, cls = self.patches(x)
        if keep is not None:
            x = jnp.take_along_axis(x, keep[:, :, None], axis=1)
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[2])), x], axis=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).astype(jnp.float32)

    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        tokens = self.tokens(x)
        return tokens[:, 0] if self.pool == "token" else jnp.mean(tokens[:, 1:], axis=1)


def vit(name: str, **kwargs: Any) -> ViT:
    """A ViT by name (``vit_tiny``, ``vit_s16``, ``vit_b16``); ``patch_size`` defaults to the name's."""
    if name not in VIT_SIZES:
        raise ConfigError(f"Unknown model {name!r} (config.model.name); choose one of {sorted(VIT_SIZES)}.")
    dim, depth, heads, patch = VIT_SIZES[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.setdefault("patch_size", patch)
    kwargs.setdefault("depth", depth)
    return ViT(dim=dim, heads=heads, **kwargs)
