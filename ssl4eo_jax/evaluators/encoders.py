"""What evaluation needs to know of an encoder, ResNet or ViT: its input bands and its pooling.

A ResNet pools globally by averaging (``pool="mean"``, the only choice). A ViT pools by its class
token (``"token"``) or by the mean of its patch tokens (``"mean"``), both after the final norm; the
evaluation may override the encoder's own choice (``config.eval.pool``, ``with_pool``): the official
evaluations read the class token for MoCo-v3, DINO and MAE's linear probe (``main_linprobe.py``:
``global_pool=False``) and the mean of the patch tokens for MAE's fine-tuning (``main_finetune.py``:
``global_pool=True``).
"""

from __future__ import annotations

from typing import Any, Union

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.models.resnet import ResNet
from ssl4eo_jax.models.vit import POOLS, ViT

Encoder = Union[ResNet, ViT]
# The first layer of each architecture: an HWIO kernel whose input axis is the bands.
STEM_KERNELS = ("conv1", "patch_embed")


def input_bands(params: dict[str, Any]) -> int:
    """The number of input bands of an encoder's ``params`` (ResNet ``conv1``, ViT ``patch_embed``)."""
    for name in STEM_KERNELS:
        if name in params:
            return int(params[name]["kernel"].shape[2])
    raise ValueError(f"Cannot tell the input bands of an encoder with parameters {sorted(params)}: "
                     f"expected one of {STEM_KERNELS}.")


def pooling(encoder: Encoder) -> str:
    """How ``encoder`` pools its features: ``"token"`` or ``"mean"``."""
    return encoder.pool if isinstance(encoder, ViT) else "mean"


def with_pool(encoder: Encoder, pool: str | None) -> Encoder:
    """``encoder`` pooling by ``pool`` (``config.eval.pool``; None: the encoder's own)."""
    if pool is None or pool == pooling(encoder):
        return encoder
    if pool not in POOLS:
        raise ConfigError(f"config.eval.pool={pool!r}; use one of {', '.join(POOLS)} (unset: the encoder's own).")
    if not isinstance(encoder, ViT):
        raise ConfigError(f"config.eval.pool={pool!r} is for ViT encoders; a ResNet pools by global average "
                          "('mean' or unset).")
    return encoder.clone(pool=pool)
