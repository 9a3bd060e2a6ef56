"""timm / torchgeo ``VisionTransformer`` state_dicts <-> our ``models.vit`` variables.

timm's names (those of the SSL4EO-S12 and torchgeo ViT weights): ``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``. The size
(ViT-Ti/S/B by the embedding dim), depth, patch size, band count and the position embeddings' grid
are read from the weights; the head count is not stored, so it is the size's (64 channels a head)
unless given.

Position embeddings for another input size are resampled with ``models.vit.resample_pos_embed``:
``jax.image.resize`` "cubic", the Keys kernel with a = -0.5 (half-pixel centres, no antialiasing).
timm resamples with PyTorch's bicubic (a = -0.75), so the two differ slightly whenever the grid
changes; at the checkpoint's own grid nothing is resampled and the conversion is exact.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl4eo_jax.interop.layout import state_dict_to_variables, variables_to_state_dict
from ssl4eo_jax.interop.state_dict import VIT, InteropError
from ssl4eo_jax.methods.base import build_encoder
from ssl4eo_jax.models.vit import VIT_SIZES, resample_pos_embed

# Our names -> timm's model names (their patch size and image size are overridden by create_model's kwargs).
TIMM_NAMES = {"vit_tiny": "vit_tiny_patch16_224", "vit_s16": "vit_small_patch16_224", "vit_b16": "vit_base_patch16_224"}
MLP_RATIO = 4


def vit_module_name(name: str) -> str:
    """``blocks_3`` -> ``blocks.3``; ``patch_embed`` -> ``patch_embed.proj`` (timm's PatchEmbed)."""
    return "patch_embed.proj" if name == "patch_embed" else re.sub(r"^blocks_(\d+)$", r"blocks.\1", name)


def _shape(state_dict: dict[str, np.ndarray], key: str, where: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise InteropError(f"{where}: the ViT weights have no {key!r}; the state_dict is truncated or not a "
                           "timm VisionTransformer's (save the whole model).")
    return tuple(np.shape(state_dict[key]))


def _depth(state_dict: dict[str, np.ndarray], where: str) -> int:
    """The number of blocks, when ``blocks.0`` to ``blocks.<last>`` all have a norm1."""
    indices = {int(k.split(".")[1]) for k in state_dict if re.match(r"^blocks\.\d+\.", k)}
    for i in range(max(indices, default=0) + 1):
        _shape(state_dict, f"blocks.{i}.norm1.weight", where)
    return max(indices) + 1


def _name_and_heads(dim: int, heads: int | None, where: str) -> tuple[str, int]:
    names = [n for n, size in VIT_SIZES.items() if size[0] == dim]
    if not names:
        sizes = ", ".join(f"{size[0]} ({n})" for n, size in VIT_SIZES.items())
        raise InteropError(f"{where}: 'patch_embed.proj.weight' gives embedding dim {dim}; ssl4eo-jax builds "
                           f"ViTs of dim {sizes}.")
    name, own = names[0], VIT_SIZES[names[0]][2]
    if heads is not None and (heads <= 0 or dim % heads):
        raise InteropError(f"{where}: heads={heads} does not divide the embedding dim {dim}; pass the model's "
                           f"head count (timm's {TIMM_NAMES[name]}: {own}).")
    if heads is not None and heads != own:
        raise InteropError(f"{where}: heads={heads}, but ssl4eo-jax's {name} (dim {dim}) has {own} heads; "
                           "other head counts cannot be built.")
    return name, own


def detect_vit(state_dict: dict[str, np.ndarray], heads: int | None = None, pool: str = "token",
               where: str = "the weights") -> tuple[dict[str, Any], int]:
    """``config.model`` (at the checkpoint's own ``img_size``) and the band count of a prefix-free
    timm ViT state_dict; raises a one-line ``InteropError`` naming ``where`` and the key at fault."""
    shape = _shape(state_dict, VIT.stem, where)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise InteropError(f"{where}: {VIT.stem!r} has shape {shape}; a square (dim, bands, p, p) patch "
                           "projection is expected.")
    dim, bands, patch = shape[:3]
    name, _ = _name_and_heads(dim, heads, where)
    _shape(state_dict, "cls_token", where)
    tokens = _shape(state_dict, "pos_embed", where)[1] - 1
    grid = int(round(math.sqrt(tokens)))
    if grid * grid != tokens:
        raise InteropError(f"{where}: 'pos_embed' has {tokens} patch positions after the class token, not a "
                           "square grid; only square ViT inputs with a class token are supported.")
    depth = _depth(state_dict, where)
    hidden = _shape(state_dict, "blocks.0.mlp.fc1.weight", where)[0]
    if hidden != MLP_RATIO * dim:
        raise InteropError(f"{where}: 'blocks.0.mlp.fc1.weight' has {hidden} hidden units; ssl4eo-jax's ViT "
                           f"has mlp_ratio {MLP_RATIO} ({MLP_RATIO * dim}).")
    _shape(state_dict, "norm.weight", where)
    model_cfg = {"name": name, "patch_size": int(patch), "depth": depth, "img_size": int(grid * patch), "pool": pool,
                 "pos_embed": "learned", "dtype": "auto"}
    return model_cfg, int(bands)


def describe(model_cfg: dict[str, Any], num_bands: int) -> str:
    return (f"ssl4eo-jax {model_cfg['name']} ({num_bands} bands, patch {model_cfg['patch_size']}, "
            f"depth {model_cfg['depth']}, img_size {model_cfg['img_size']})")


def abstract_vit(model_cfg: dict[str, Any], num_bands: int) -> dict[str, Any]:
    """Shapes of the ViT's ``{"params"}`` (traced, nothing computed)."""
    encoder = build_encoder(ml_collections.ConfigDict(model_cfg))
    size = model_cfg["img_size"]
    return jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros((1, size, size, num_bands)), train=False))


def state_dict_to_vit(state_dict: dict[str, np.ndarray], model_cfg: dict[str, Any], num_bands: int,
                      where: str = "the weights") -> dict[str, Any]:
    """ViT encoder variables (``batch_stats`` empty) from a prefix-free timm state_dict; every key
    must match, else one line lists the unexpected, missing and mis-shaped keys."""
    like = abstract_vit(model_cfg, num_bands)
    try:
        params = state_dict_to_variables(state_dict, like, vit_module_name, describe(model_cfg, num_bands))["params"]
    except InteropError as e:
        lines = str(e).split("\n")
        raise InteropError(f"{where}: {lines[0]} " + "; ".join(line.strip() for line in lines[1:])
                           + ". Pass a timm VisionTransformer's whole state_dict.") from None
    return {"params": params, "batch_stats": {}}


def resample_variables(variables: dict[str, Any], model_cfg: dict[str, Any], img_size: int
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``variables`` and ``model_cfg`` for inputs of ``img_size`` (``pos_embed`` resampled, see the
    module docstring); unchanged when the grid is the same."""
    patch = model_cfg["patch_size"]
    if img_size % patch:
        raise InteropError(f"img_size={img_size} is not a multiple of the weights' patch size {patch}.")
    grid = img_size // patch
    pos_embed = np.asarray(resample_pos_embed(jnp.asarray(variables["params"]["pos_embed"]), (grid, grid)))
    params = {**variables["params"], "pos_embed": pos_embed.astype(np.float32)}
    return {**variables, "params": params}, {**model_cfg, "img_size": img_size}


def vit_encoder_to_state_dict(variables: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """The timm ``VisionTransformer`` state_dict (without ``head``) of ViT encoder variables."""
    return variables_to_state_dict({"params": variables["params"]}, vit_module_name, prefix)
