"""DINO pre-training of a ResNet-18 (or, with ``arch=vit``, a ViT) on Sentinel-2 patches.

Run (demo data):
    python -m ssl4eo_jax.main --config=configs/dino.py --workdir=runs/dino_demo
    python -m ssl4eo_jax.main --config=configs/dino.py:demo,arch=vit --workdir=runs/dino_vit_demo
On a converted dataset:
    python -m ssl4eo_jax.main --config=configs/dino.py:bigearthnet --config.data.dir=/data/ben

Published defaults for ResNets (facebookresearch/dino README, ResNet-50 command, other arguments at
their defaults; also SSL4EO-S12's DINO RN50): head 2048-2048-256 without BN, out_dim 65536,
last layer weight-normalised with its gain fixed (``norm_last_layer``) and frozen for the first
epoch; student temperature 0.1, teacher temperature 0.04 throughout (warm-up 0.04 -> 0.04 over 0
epochs; the ViT recipes use 0.04 -> 0.07 over 30), centre momentum 0.9, teacher momentum 0.996 ->
1 by cosine; 2 global crops of scale (0.14, 1) and 8 local crops of scale (0.05, 0.14) at 3/7 of the
global size (96 for 224); views: blur always on global view 1, with p 0.1 on global view 2 and 0.5
on local views, solarisation p 0.2 on global view 2 only, on top of the review's multispectral
pipeline; SGD, lr 0.03 x B/256, momentum 0.9, weight decay 1e-4 (biases and norms excluded, as the
official parameter groups), per-parameter gradient clipping at 3.0, 10 warm-up epochs (0 to lr as the
official ``np.linspace``: ``optim.warmup_linspace``) then cosine to min lr 1e-6.
With ``arch=vit`` (``--config=configs/dino.py:<preset>,arch=vit``): the ViT recipe, the official
``main_dino.py`` defaults (made for ViT-S/16): global crops (0.4, 1), local crops (0.05, 0.4) of
96 px for 224 (3/7 of the crop, rounded to whole patches), AdamW (betas 0.9, 0.999) with lr
5e-4 x B/256 (SSL4EO-S12's ViT-S/16: 1.5e-4), weight decay by cosine from 0.04 to 0.4 over the run
(biases and norms without), gradient clipping at 3.0, 10 warm-up epochs then cosine to 1e-6; the ViT
(``presets.pretrain.vit_model_config``) with learned position embeddings and truncated-normal (0.02)
weights, the class token as the feature; the head and temperatures as for ResNets. Difference:
no drop-path (the official ViT-S uses 0.1).
Demo presets (``demo*``): out_dim 4096 and 4 local crops (a CPU-sized run); by the rules of
``ssl4eo_jax/short_run.py``, a warm-up over the first 10 % of the run as every method's demo, the largest base
teacher momentum, at most 0.996, whose cosine to 1 leaves e^-3 (5 %) of the teacher's initialisation
after the run (0.973005 over 219 steps),
and the last layer frozen for the first 1 % of the run instead of one epoch.
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a ResNet-18 of width 16, a constant lr
# for 16 steps): small heads, 2 local views, no last-layer freezing; the teacher follows the student in a short
# run (momentum 0.99 instead of 0.996). TINY_LR_FACTOR multiplies this config's lr.
TINY = {"dino.out_dim": 64, "dino.hidden": (64, 64), "dino.bottleneck": 32, "aug.local_views": 2,
        "dino.freeze_last_layer": 0.0, "dino.momentum_teacher": 0.99}
TINY_LR_FACTOR = 3.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("dino", arg)
    common.add_monitor(config, arg)
    demo, vit = common.is_demo(arg), common.arch(arg) == "vit"
    common.asymmetric_views(config, local_blur=0.5)
    config.aug.crop.scale = (0.4, 1.0) if vit else (0.14, 1.0)
    config.aug.local_crop_scale = (0.05, 0.4) if vit else (0.05, 0.14)
    config.aug.local_views = 4 if demo else 8

    config.dino = ml_collections.ConfigDict()
    config.dino.out_dim = 4096 if demo else 65536
    config.dino.hidden = (2048, 2048)
    config.dino.bottleneck = 256
    config.dino.use_bn = False
    config.dino.norm_last_layer = True
    config.dino.freeze_last_layer = common.short_run(arg, 1.0)  # epochs
    config.dino.student_temp = 0.1
    config.dino.teacher_temp = 0.04
    config.dino.warmup_teacher_temp = 0.04
    config.dino.warmup_teacher_temp_epochs = 0
    config.dino.center_momentum = 0.9
    config.dino.momentum_teacher = common.short_run(arg, 0.996)

    if vit:
        config.model = common.vit_model_config(arg, config.aug.get_ref("crop_size"), weight_init="trunc_normal")
        patch = config.model.patch_size
        config.aug.local_crop_size = max(patch, patch * round(config.aug.crop_size * 3 / 7 / patch))
        optim = common.optimizer(config, "adamw", 5e-4, 0.04, weight_decay_end=0.4, b1=0.9, b2=0.999, clip_grad=3.0,
                                 warmup_epochs=common.published_warmup(arg), warmup_linspace=True, min_lr=1e-6)
    else:
        optim = common.optimizer(config, "sgd", 0.03, 1e-4, weight_decay_1d=False, clip_grad=3.0,
                                 warmup_epochs=common.published_warmup(arg), warmup_linspace=True, min_lr=1e-6)
    optim.end_lr_fraction = optim.get_ref("min_lr") / optim.get_ref("lr")
    return config
