"""MoCo v2 pre-training of a ResNet-18 on Sentinel-2 patches.

Run (demo data):
    python -m ssl4eo_jax.main --config=configs/mocov2.py --workdir=runs/mocov2_demo
On a converted dataset:
    python -m ssl4eo_jax.main --config=configs/mocov2.py:bigearthnet --config.data.dir=/data/ben

Follows the SSL4EO review's reference (src/models/moco/builder.py, src/bigearthnet_B12_moco_train.py,
srun_train_moco_rn18.sh): dim 128, queue K = 65536, key momentum 0.999 (constant), temperature 0.2,
MLP head 512-512-128 without BN (``--mlp``), shuffle-BN (per-device BN statistics, keys shuffled
across devices, as the reference's 4-GPU DDP run); SGD, lr 0.05 at global batch 256 (scaled
linearly with the batch here; the reference does not scale), momentum 0.9, weight decay 1e-4 on
every parameter, cosine per epoch without warm-up (``--cos``); global batch 256 (64 per GPU x 4).
The reference script trains 100 epochs; its main linear-probe results load the 200-epoch
checkpoint (``--config.train.epochs=200``).
Demo presets (``demo*``: runs of a few hundred steps) derive four settings from the run's size by
the rules of ``ssl4eo_jax/short_run.py``, logged at start-up: the queue holds at most 20 % of the
train split as a multiple of the global batch (768 keys for the demo's 4,000 patches at batch
256); the key momentum is the largest, at most 0.999, that leaves e^-3 (5 %) of the key encoder's
initialisation after the run (m = exp(-3 / S): 0.986394 over the demo's 219 steps); shuffle-BN groups are a quarter of a batch under 256 (the reference's 4
GPUs), else 64; a linear warm-up over the first 10 % of the run, as every method's demo.
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a ResNet-18 of width 16, a constant lr
# for 16 steps): small heads; a queue of one batch (the tests' 32), so that with two alternating batches it only
# ever holds the other batch's keys; the key network follows in a short run (momentum 0.99). TINY_LR_FACTOR multiplies this config's lr.
TINY = {"mocov2.projector": (64, 32), "mocov2.queue_size": 32, "mocov2.momentum": 0.99}
TINY_LR_FACTOR = 8.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("mocov2", arg)
    common.add_monitor(config, arg)

    config.mocov2 = ml_collections.ConfigDict()
    config.mocov2.projector = (512, 128)  # hidden = the encoder's feature size in the reference
    config.mocov2.queue_size = common.short_run(arg, 65536)
    config.mocov2.momentum = common.short_run(arg, 0.999)
    config.mocov2.momentum_schedule = "constant"  # or "cosine" (to 1 over the run, MoCo v3 / BYOL)
    config.mocov2.temperature = 0.2
    config.mocov2.shuffle_bn = True
    config.mocov2.bn_group_size = common.short_run(arg, 64)  # examples per BN group: the reference's per GPU

    common.optimizer(config, "sgd", 0.05, 1e-4, per_epoch=True, warmup_epochs=common.warmup_epochs(arg))
    return config
