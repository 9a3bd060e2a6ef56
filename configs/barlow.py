"""Barlow Twins pre-training of a ResNet-18 on 13-band (or any-band) Sentinel-2 patches.

Run (demo data, a few minutes on a CPU):
    python -m ssl4eo_jax.main --config=configs/barlow.py --workdir=runs/barlow_demo
On a converted dataset:
    python -m ssl4eo_jax.main --config=configs/barlow.py:bigearthnet --config.data.dir=/data/ben --workdir=runs/ben

Follows the SSL4EO review's reference (src/bigearthnet_B12_barlowtwins_train.py and
srun_train_barlowtwins_rn18.sh): lambda 0.0051; projector 2048-2048-2048 (RN18, BigEarthNet);
LARS with eta 0.001, momentum 0.9, weight decay 1e-6, biases and BN excluded from weight decay and
adaptation; lr 0.1 for weights and 0.0048 for biases at global batch 256 (scaled linearly with the
batch here); cosine decay without warm-up; 100 epochs; global batch 256 (64 per GPU x 4).
Differences: the cosine is smooth per step (the reference steps it per epoch; set
``optim.per_epoch=True`` for that), and the demo presets warm up over the first 10 % of the run,
as every method's demo (``ssl4eo_jax/short_run.py``).
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a ResNet-18 of width 16, a constant lr
# for 16 steps): small heads. TINY_LR_FACTOR multiplies this config's lr.
TINY = {"barlow.projector": (64, 64, 64)}
TINY_LR_FACTOR = 8.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("barlow", arg)
    common.add_monitor(config, arg)

    config.barlow = ml_collections.ConfigDict()
    config.barlow.lambd = 0.0051
    config.barlow.projector = (2048, 2048, 2048)

    # lr 0.1 for weights, 0.0048 for biases and BN parameters, at global batch 256.
    common.optimizer(config, "lars", 0.1, 1e-6, base_lr_biases=0.0048, warmup_epochs=common.warmup_epochs(arg))
    return config
