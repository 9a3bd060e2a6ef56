"""MAE pre-training of a ViT on Sentinel-2 patches.

Run (demo data: a ViT-Ti with 8 px patches):
    python -m ssl4eo_jax.main --config=configs/mae.py --workdir=runs/mae_demo
On a converted dataset (ViT-S/16):
    python -m ssl4eo_jax.main --config=configs/mae.py:ssl4eo_s12 --config.data.dir=/data/s12

Official settings (facebookresearch/mae PRETRAIN.md and ``main_pretrain.py``: ``--mask_ratio 0.75
--norm_pix_loss --blr 1.5e-4 --weight_decay 0.05 --warmup_epochs 40 --epochs 800``; SSL4EO-S12's
ViT-S/16 used mask ratio 0.7 and 200 epochs): 75 % of the patches masked at random per image; a
decoder 512 wide, 8 blocks, 16 heads; per-patch normalised pixel targets; fixed 2-D sine-cosine
position embeddings in the encoder and decoder; xavier-uniform Linear weights; AdamW (betas 0.9,
0.95), lr 1.5e-4 x B/256 with a linear warm-up from 0 then a half-cycle cosine to 0 (per
iteration), weight decay 0.05 except on 1-D parameters; one view per image: a crop of scale
(0.2, 1) and a horizontal flip (``RandomResizedCrop`` + ``RandomHorizontalFlip``).
Differences: 100 epochs with 10 warm-up epochs (the presets' length), not 800 with 40; the crop is
resized bilinearly (the official: bicubic).
Demo presets (``demo*``): the ViT-Ti (``presets.pretrain.vit_model_config``); the decoder keeps the
official depth (8) and head width (32) at half the encoder's width, as the official ViT-L's
1024 -> 512 (``DEMO_DECODER``: 96 wide, 3 heads, for the ViT-Ti's 192); a warm-up over the first
10 % of the run, as every method's demo (``ssl4eo_jax/short_run.py``).
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

DEMO_DECODER = {"decoder_dim": 96, "decoder_depth": 8, "decoder_heads": 3}

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a constant lr for 16 steps): a
# 2-block ViT-Ti with 8 px patches (the test sets the depth) and a 1-block decoder. TINY_LR_FACTOR multiplies this config's lr.
TINY = {"mae.decoder_depth": 1}
TINY_LR_FACTOR = 8.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("mae", arg)
    common.add_monitor(config, arg)
    config.aug.ops = ("crop", "hflip")
    config.aug.global_views = 1
    config.aug.crop.scale = (0.2, 1.0)
    config.model = common.vit_model_config(arg, config.aug.get_ref("crop_size"), pos_embed="sincos")

    config.mae = ml_collections.ConfigDict({"mask_ratio": 0.75, "norm_pix_loss": True, "decoder_dim": 512,
                                           "decoder_depth": 8, "decoder_heads": 16})
    if common.is_demo(arg):
        config.mae.update(DEMO_DECODER)

    common.optimizer(config, "adamw", 1.5e-4, 0.05, b1=0.9, b2=0.95, warmup_epochs=common.published_warmup(arg))
    return config
