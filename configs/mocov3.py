"""MoCo v3 pre-training of a ViT on Sentinel-2 patches.

Run (demo data: a ViT-Ti with 8 px patches):
    python -m ssl4eo_jax.main --config=configs/mocov3.py --workdir=runs/mocov3_demo
On a converted dataset (ViT-S/16):
    python -m ssl4eo_jax.main --config=configs/mocov3.py:ssl4eo_s12 --config.data.dir=/data/s12

Official ViT settings (facebookresearch/moco-v3 CONFIG.md, ViT-Small: ``--moco-m-cos --moco-t=.2
--stop-grad-conv1 --optimizer=adamw --lr=1.5e-4 --weight-decay=.1 --warmup-epochs=40 --epochs=300``;
``main_moco.py`` defaults ``--moco-dim 256 --moco-mlp-dim 4096 --moco-m 0.99``; SSL4EO-S12's ViT-S/16
run used the same with 10 warm-up epochs of 100): projector 3 layers 4096-4096-256 with BN (the last
without affine), predictor 4096-256, temperature 0.2, momentum 0.99 -> 1 by cosine per iteration;
the ViT with fixed 2-D sine-cosine position embeddings, a frozen random patch projection and
xavier-uniform Linear weights; AdamW (betas 0.9, 0.999), lr 1.5e-4 x B/256 with a linear warm-up
from 0, then a half-cycle cosine to 0, weight decay 0.1 on every parameter (biases and norms too);
asymmetric views as BYOL's (blur p 1.0 / 0.1, solarisation p 0 / 0.2) on a crop of scale (0.08, 1)
(``--crop-min=.08``), on top of the review's multispectral pipeline.
Differences: 100 epochs with 10 warm-up epochs (the presets' length, as SSL4EO-S12), not 300 with
40; initialisation: the official ViT's ``qkv`` (uniform over sqrt(6 / (D + D)) per q, k, v) is
xavier over the fused (D, 3D) kernel here, its patch projection's bound sqrt(6 / (3 p^2 + D))
hard-codes 3 input channels where ours counts the bands (C p^2 + D), and its class token starts at
std 1e-6, ours at 0.02 (MAE's); the 2-D sine-cosine table puts the column's half first (MAE's order;
the official MoCo v3 puts the row's first: the same values, halves swapped).
Demo presets (``demo*``): the ViT-Ti (``presets.pretrain.vit_model_config``) and, by the rules of
``ssl4eo_jax/short_run.py``, a warm-up over the first 10 % of the run, as every method's demo, and
the largest base momentum, at most 0.99, whose cosine to 1 leaves e^-3 of the momentum encoder's
initialisation after the run.
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a constant lr for 16 steps): a
# 2-block ViT-Ti with 8 px patches (the test sets the depth), small heads; the momentum encoder
# follows in a short run.
# TINY_LR_FACTOR multiplies this config's lr.
TINY = {"mocov3.mlp_dim": 64, "mocov3.dim": 32, "mocov3.momentum": 0.9}
TINY_LR_FACTOR = 4.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("mocov3", arg)
    common.add_monitor(config, arg)
    common.asymmetric_views(config)
    config.aug.crop.scale = (0.08, 1.0)
    config.model = common.vit_model_config(arg, config.aug.get_ref("crop_size"), pos_embed="sincos")

    config.mocov3 = ml_collections.ConfigDict()
    config.mocov3.dim = 256
    config.mocov3.mlp_dim = 4096
    config.mocov3.temperature = 0.2
    config.mocov3.momentum = common.short_run(arg, 0.99)
    config.mocov3.stop_grad_patch = True

    common.optimizer(config, "adamw", 1.5e-4, 0.1, b1=0.9, b2=0.999, weight_decay_1d=True,
                     warmup_epochs=common.published_warmup(arg))
    return config
