"""SimSiam pre-training of a ResNet-18 on Sentinel-2 patches.

Run (demo data):
    python -m ssl4eo_jax.main --config=configs/simsiam.py --workdir=runs/simsiam_demo
On a converted dataset:
    python -m ssl4eo_jax.main --config=configs/simsiam.py:bigearthnet --config.data.dir=/data/ben

Follows the SSL4EO review's reference (src/models/simsiam/builder.py,
src/bigearthnet_B12_simsiam_train.py, srun_train_simsiam_rn18.sh): projector 512-512-2048 (3 layers,
BN, last BN without affine), predictor 2048-512-2048, encoder with zero-initialised residual BNs;
SGD, lr 0.05 at global batch 256 (scaled linearly here; the reference does not scale), momentum 0.9,
weight decay 1e-4; step decay x0.1 at epochs 60 and 80 (no ``--cos`` for ResNet-18);
``fix_pred_lr`` off (the reference uses it for ResNet-50 only); 100 epochs.
The review found SimSiam collapsing after about 10 epochs on Sentinel-2 and probed the epoch-10
checkpoint: the collapse monitor (``config.monitor``) watches for it, the kNN evaluator
(``config.evals.knn``) scores the encoder during training, and ``--config.eval.use_best=True``
evaluates the checkpoint with the best online kNN score.
Demo presets (``demo*``): the official SimSiam recipe (facebookresearch/simsiam ``main_simsiam.py``)
instead of the review's ResNet-18 step schedule: cosine decay and ``fix_pred_lr`` (the predictor
keeps the base lr), which the SimSiam paper found to help; a linear warm-up over the first 10 % of
the run, as every method's demo (``ssl4eo_jax/short_run.py``).
"""

import ml_collections

from ssl4eo_jax.presets import pretrain as common

# Toy scale for the tests (tests/test_methods.py: 32 px crops, a ResNet-18 of width 16, a constant lr
# for 16 steps): small heads. TINY_LR_FACTOR multiplies this config's lr.
TINY = {"simsiam.projector": (64, 64, 64), "simsiam.predictor": (16, 64)}
TINY_LR_FACTOR = 8.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config("simsiam", arg)
    common.add_monitor(config, arg)
    config.model.zero_init_residual = True

    config.simsiam = ml_collections.ConfigDict()
    config.simsiam.projector = (512, 512, 2048)  # hidden = the encoder's feature size
    config.simsiam.predictor = (512, 2048)
    demo = common.is_demo(arg)
    config.simsiam.fix_pred_lr = demo

    schedule = {"schedule": "cosine"} if demo else {"schedule": "step", "milestones": (60.0, 80.0), "gamma": 0.1}
    common.optimizer(config, "sgd", 0.05, 1e-4, warmup_epochs=common.warmup_epochs(arg), **schedule)
    return config
