"""MAE (He et al., CVPR 2022), as facebookresearch/mae ``models_mae.py`` and ``main_pretrain.py``.

* Per image, ``mask_ratio`` (75 %) of the patches are masked at random (``random_masking``, from the
  step's ``method`` stream); the ViT encoder sees the class token and the visible patches only.
* A lightweight decoder (``models/mae_decoder.py``: 512 wide, 8 blocks, 16 heads officially) puts a
  shared mask token in each masked patch's place and predicts every patch's pixels.
* Loss (``losses.mae``): the MSE between the prediction and the patch's pixels, each patch
  standardised by its own mean and variance (``norm_pix_loss``), averaged over the masked patches.
  The pixels are the view as the encoder gets it (normalised per band), as the official code.
* Fixed sine-cosine position embeddings in the encoder and decoder (``requires_grad=False``): frozen.
  AdamW (betas 0.9, 0.95) without weight decay on 1-D parameters (``add_weight_decay``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods.base import MethodBase, Metrics, TrainLength, build_encoder
from ssl4eo_jax.methods.mocov3 import fixed_encoder_parts, frozen_groups
from ssl4eo_jax.methods.nets import apply_train
from ssl4eo_jax.models.mae_decoder import MAEDecoder, MaskedAutoencoder, random_masking
from ssl4eo_jax.models.vit import ViT
from ssl4eo_jax.optim import ParamGroups


class MAE(MethodBase):
    name = "mae"

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.mae
        self.mask_ratio = float(cfg.mask_ratio)
        self.norm_pix = bool(cfg.norm_pix_loss)
        self.encoder = build_encoder(config.model)
        if not isinstance(self.encoder, ViT):
            raise ConfigError(f"MAE needs a ViT encoder (config.model.name=vit_tiny|vit_s16|vit_b16), "
                              f"not {config.model.name!r}.")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"config.mae.mask_ratio={self.mask_ratio}: use a value between 0 and 1 (0.75).")
        self.patch = self.encoder.patch_size
        self.grid = self.encoder.img_size // self.patch
        decoder = MAEDecoder(int(cfg.decoder_dim), int(cfg.decoder_depth), int(cfg.decoder_heads), self.grid,
                             dtype=self.encoder.dtype)
        self.net = MaskedAutoencoder(self.encoder, decoder)
        self.frozen = fixed_encoder_parts(self.encoder) + ("decoder/decoder_pos_embed",)

    def init(self, key: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        if images.shape[1] != self.encoder.img_size:
            raise ConfigError(f"MAE's views are {images.shape[1]} px but config.model.img_size is "
                              f"{self.encoder.img_size}: set them equal (the decoder's position embeddings are for one grid).")
        return super().init(key, images)

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        images = views[0]
        ids_keep, ids_restore, mask = random_masking(key, images.shape[0], self.grid**2, self.mask_ratio)
        pred, batch_stats = apply_train(self.net, params, batch_stats, images, ids_keep=ids_keep,
                                        ids_restore=ids_restore)
        target = losses.patchify(images.astype(jnp.float32), self.patch)
        loss = losses.mae(pred, target, mask, self.norm_pix)
        unnormalised = losses.mae(pred, target, mask, False)
        return loss, (batch_stats, extra, {"mask_ratio": jnp.mean(mask), "pixel_mse": jax.lax.stop_gradient(unnormalised)})

    def param_groups(self) -> ParamGroups | None:
        return frozen_groups(self.frozen)
