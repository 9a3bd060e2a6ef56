"""SimCLR pre-training of a ResNet-18 on Sentinel-2 patches.

Run (demo data):
    python -m ssl4eo_jax.main --config=configs/simclr.py --workdir=runs/simclr_demo
On a converted dataset:
    python -m ssl4eo_jax.main --config=configs/simclr.py:bigearthnet --config.data.dir=/data/ben

Published defaults (Chen et al. 2020; google-research/simclr v1): projector 2048-128 (Linear + BN +
ReLU, Linear + BN without shift; the published hidden width is the encoder's, 2048 for ResNet-50,
kept at 2048 for ResNet-18), temperature 0.1 (the code's default with LARS), both views in one BN
batch; LARS, lr 0.3 x B/256, weight decay 1e-6, biases and BN excluded from weight decay and
adaptation, the lr applied before the momentum (the TF ``LARSOptimizer``'s ``classic_momentum``), 10
warm-up epochs then cosine to 0; the review's view pipeline for both views.
Demo presets (``demo*``): a warm-up over the first 10 % of the run, as every method's demo
(``ssl4eo_jax/short_run.py``).
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a ResNet-18 of width 16, a constant lr
# for 16 steps): small heads. TINY_LR_FACTOR multiplies this config's lr.
TINY = {"simclr.projector": (64, 32)}
TINY_LR_FACTOR = 8.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("simclr", arg)
    common.add_monitor(config, arg)

    config.simclr = ml_collections.ConfigDict()
    config.simclr.projector = (2048, 128)
    config.simclr.temperature = 0.1

    # The official TF LARSOptimizer (classic_momentum): the lr scales each update before the momentum.
    common.optimizer(config, "lars", 0.3, 1e-6, warmup_epochs=common.published_warmup(arg), lr_in_momentum=True)
    return config
