"""VICReg pre-training of a ResNet-18 on Sentinel-2 patches.

Run (demo data):
    python -m ssl4eo_jax.main --config=configs/vicreg.py --workdir=runs/vicreg_demo
On a converted dataset:
    python -m ssl4eo_jax.main --config=configs/vicreg.py:bigearthnet --config.data.dir=/data/ben

Published defaults (Bardes et al. 2022; facebookresearch/vicreg main_vicreg.py): coefficients 25 /
25 / 1; LARS, base lr 0.2 x B/256, weight decay 1e-6, biases and BN excluded from weight decay and
adaptation, 10 warm-up epochs then cosine to 0.001 x lr; the BYOL-style asymmetric views (blur p 1.0
/ 0.1, solarisation p 0 / 0.2) on top of the review's multispectral pipeline.
Changed for ResNet-18: expander 2048-2048-2048 instead of 8192-8192-8192 (published for ResNet-50's
2048 features; 2048 is 4x ResNet-18's 512 as 8192 is 4x 2048, and the size of the review's ResNet-18
Barlow Twins projector).
Demo presets (``demo*``): a warm-up over the first 10 % of the run, as every method's demo
(``ssl4eo_jax/short_run.py``).
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a ResNet-18 of width 16, a constant lr
# for 16 steps): small heads. TINY_LR_FACTOR multiplies this config's lr.
TINY = {"vicreg.projector": (64, 64, 64)}
TINY_LR_FACTOR = 8.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("vicreg", arg)
    common.add_monitor(config, arg)
    common.asymmetric_views(config)

    config.vicreg = ml_collections.ConfigDict()
    config.vicreg.projector = (2048, 2048, 2048)
    config.vicreg.sim_coeff = 25.0
    config.vicreg.std_coeff = 25.0
    config.vicreg.cov_coeff = 1.0

    common.optimizer(config, "lars", 0.2, 1e-6, warmup_epochs=common.published_warmup(arg), end_lr_fraction=0.001)
    return config
