"""BYOL pre-training of a ResNet-18 on Sentinel-2 patches.

Run (demo data):
    python -m ssl4eo_jax.main --config=configs/byol.py --workdir=runs/byol_demo
On a converted dataset:
    python -m ssl4eo_jax.main --config=configs/byol.py:bigearthnet --config.data.dir=/data/ben

Published defaults (Grill et al. 2020; deepmind-research/byol): projector and predictor 4096-256
(kept for ResNet-18), target momentum 0.996 -> 1 by cosine over the run; LARS, lr 0.2 x B/256, weight
decay 1.5e-6, biases and BN excluded from weight decay and adaptation, 10 warm-up epochs then cosine
to 0; asymmetric views: blur always on view 1 and with p 0.1 on view 2, solarisation only on view 2
(p 0.2), on top of the review's multispectral pipeline (solarisation reflects normalised values
above the band mean). Epochs: the preset's (100), not the published 300/1000.
Demo presets (``demo*``, ``ssl4eo_jax/short_run.py``): a warm-up over the first 10 % of the run, as
every method's demo, and the largest base target momentum, at most 0.996, whose cosine to 1 leaves e^-3 (5 %)
of the target's initialisation after the run (0.973005 over 219 steps).
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a ResNet-18 of width 16, a constant lr
# for 16 steps): small heads. TINY_LR_FACTOR multiplies this config's lr.
TINY = {"byol.projector": (64, 32), "byol.predictor": (64, 32), "byol.momentum": 0.996}
TINY_LR_FACTOR = 8.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("byol", arg)
    common.add_monitor(config, arg)
    common.asymmetric_views(config)

    config.byol = ml_collections.ConfigDict()
    config.byol.projector = (4096, 256)
    config.byol.predictor = (4096, 256)
    config.byol.momentum = common.short_run(arg, 0.996)
    config.byol.momentum_schedule = "cosine"

    common.optimizer(config, "lars", 0.2, 1.5e-6, warmup_epochs=common.published_warmup(arg))
    return config
