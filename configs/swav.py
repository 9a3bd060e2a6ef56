"""SwAV pre-training of a ResNet-18 on Sentinel-2 patches.

Run (demo data):
    python -m ssl4eo_jax.main --config=configs/swav.py --workdir=runs/swav_demo
On a converted dataset:
    python -m ssl4eo_jax.main --config=configs/swav.py:bigearthnet --config.data.dir=/data/ben

Follows the SSL4EO review's reference (src/bigearthnet_B12_swav_train.py, src/models/swav/resnet50.py,
srun_train_swav_rn18.sh; ResNet-18 on BigEarthNet): temperature 0.1, Sinkhorn epsilon 0.05 with 3
iterations, head 512-2048-128, 500 prototypes, queue of 1280 starting at epoch 15, prototypes frozen
for the first 313 iterations, 2 crops, crops 0 and 1 for assignment; SGD (LARC is commented out in
the reference), lr 0.3 at global batch 256 (scaled linearly here; the reference does not scale),
momentum 0.9, weight decay 1e-5 on every parameter, cosine per epoch to 0 without warm-up (the
reference's ``--cos``; its per-iteration warm-up schedule is never used); 100 epochs.
So2Sat preset: 300 prototypes, weight decay 1e-4 (the reference's So2Sat runs).
Demo presets (``demo*``) derive from the run's size by the rules of ``ssl4eo_jax/short_run.py``,
logged at start-up: at most half the global batch of prototypes (128 at batch 256); the queue only
when its age (1280 / batch steps) is at most 1 % of the steps it would serve after starting at 15 %
of the run (not on the demo's 219 steps: no queue); the prototypes frozen for the first 1 % of the
run (2 steps); a linear warm-up over the first 10 % of the run, as every method's demo.
Not reproduced: the reference SwAV ResNet pads the 12-band input by 2 before ``conv1`` (a quirk of
its ResNet); ours is the standard ResNet-18.
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a ResNet-18 of width 16, a constant lr
# for 16 steps): small heads; no queue, which the reference starts only at epoch 15 (tests/test_methods.py tests
# the queue on its own). TINY_LR_FACTOR multiplies this config's lr.
TINY = {"swav.hidden_mlp": 64, "swav.feat_dim": 32, "swav.prototypes": 16, "swav.queue_length": 0,
        "swav.freeze_prototypes_niters": 3}
TINY_LR_FACTOR = 1.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("swav", arg)
    common.add_monitor(config, arg)
    name, _ = common.preset(arg)

    config.swav = ml_collections.ConfigDict()
    config.swav.hidden_mlp = 2048
    config.swav.feat_dim = 128
    config.swav.prototypes = common.short_run(arg, 300 if name == "so2sat" else 500)
    config.swav.temperature = 0.1
    config.swav.epsilon = 0.05
    config.swav.sinkhorn_iterations = 3
    config.swav.crops_for_assign = 2  # the first n crops (the global ones)
    config.swav.queue_length = common.short_run(arg, 1280)
    config.swav.epoch_queue_starts = common.short_run(arg, 15.0)
    config.swav.freeze_prototypes_niters = common.short_run(arg, 313)

    common.optimizer(config, "sgd", 0.3, 1e-4 if name == "so2sat" else 1e-5, per_epoch=True,
                     warmup_epochs=common.warmup_epochs(arg))
    return config
