"""Fine-tuning of the whole encoder with a linear head on augmented images; with
``--config.checkpoint=random`` the fully supervised baseline trained from scratch.

    python -m ssl4eo_jax.main --config=configs/eval/finetune.py[:<dataset>] --config.checkpoint=RUN_OR_FILE \
        [--config.eval.label_fraction=0.01] --workdir=W

Reference (``bigearthnet_B12_moco_FT.py``): SGD momentum 0.9, no weight decay, lr 0.1 at the global
batch of 1024 (scaled to ``config.train.batch``), decay x0.2 at epochs 20 and 40 of 50,
RandomResizedCrop + horizontal flip. (At 1 % the reference uses lr 0.02 and 100 epochs with
milestones 60/80: override ``config.train.base_lr``, ``epochs`` and ``optim.milestones``.)
Checkpoints go to ``<workdir>/checkpoints``; re-running the command resumes.

ViT encoders: ``--config=configs/eval/finetune.py:<dataset>,recipe=mae`` is MAE's fine-tuning recipe
(AdamW, blr 5e-4 at batch 256, weight decay 0.05, layer-wise lr decay ``config.train.layer_decay``
0.65, 5 warm-up epochs, cosine, 100 epochs, the mean of the patch tokens as the feature:
``config.eval.pool=mean``); see ``ssl4eo_jax.presets.evaluation.mae_finetune_recipe`` for what it
leaves out (drop-path, mixup/cutmix, label smoothing).
"""

from ssl4eo_jax.presets.evaluation import get_eval_config


def get_config(arg: str | None = None):
    return get_eval_config("finetune", arg)
