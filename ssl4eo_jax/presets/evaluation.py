"""Shared settings of the evaluation configs (``configs/eval/<linear|knn|finetune>.py:<dataset>``).

``config.checkpoint`` is the encoder: one of our run directories, a PyTorch/timm/torchgeo weights
file (``ssl4eo_jax.interop.load_encoder``), or ``random`` for a randomly initialised
``config.model`` (the random-init baseline; with the ``finetune`` task, supervised training from
scratch). ``config.data`` is the target dataset (the demo data by default); the encoder's bands are
mapped onto it by name (``ssl4eo_jax.evaluators.transfer``).

``config.train`` trains a classifier on augmented images (fine-tuning, and the reference linear
protocol): SGD with momentum 0.9, no weight decay, step decay at ``milestones`` (epochs), and the
reference's learning rate given at its global batch of 1024 (256 per GPU x 4 GPUs,
REFERENCE_SETTINGS.md 1.1) and scaled linearly to ``config.train.batch``.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from ssl4eo_jax.presets import pretrain as common

REFERENCE_GLOBAL_BATCH = 1024

# REFERENCE_SETTINGS.md 1.7. Linear probes: BigEarthNet (MoCo/SimSiam/SwAV RN18, 100 %), So2Sat
# (MoCo RN18), EuroSAT transfer (MoCo RN18); other datasets use BigEarthNet's. Fine-tuning: BigEarthNet.
REFERENCE_PROTOCOLS = {
    "linear": {
        "bigearthnet": dict(base_lr=4.0, epochs=100, milestones=(60, 80), gamma=0.1),
        "so2sat": dict(base_lr=2.0, epochs=100, milestones=(40, 60), gamma=0.1),
        "eurosat": dict(base_lr=8.0, epochs=100, milestones=(60, 80), gamma=0.1),
    },
    "finetune": {"bigearthnet": dict(base_lr=0.1, epochs=50, milestones=(20, 40), gamma=0.2)},
}


def reference_protocol(kind: str, dataset: str) -> dict:
    table = REFERENCE_PROTOCOLS[kind]
    return table.get(dataset, table["bigearthnet"])


def train_config(kind: str, name: str, p: dict) -> ml_collections.ConfigDict:
    """``config.train``: the classifier trained on augmented images (``kind``: linear or finetune)."""
    ref = reference_protocol(kind, name)
    train = ml_collections.ConfigDict()
    train.batch = 256
    train.epochs = float(ref["epochs"])
    train.steps = 0  # > 0 overrides epochs
    train.log_every = 10
    train.checkpoint_every = 500
    train.transfer_guard = "allow"  # "disallow": any implicit host<->device copy in the loop fails
    train.workers = 1
    train.seed = 0
    train.base_lr = ref["base_lr"]  # at the reference's global batch of 1024
    train.optim = ml_collections.ConfigDict({
        "name": "sgd", "momentum": 0.9, "weight_decay": 0.0, "schedule": "step",
        "milestones": ref["milestones"], "gamma": ref["gamma"], "warmup_epochs": 0.0,
    })
    train.optim.lr = train.get_ref("base_lr") * train.get_ref("batch") / REFERENCE_GLOBAL_BATCH
    # RandomResizedCrop (torchvision's default scale) + horizontal flip; So2Sat: RandomCrop(pad 4) + flip.
    ops = ("pad_crop", "hflip") if "pad_crop" in p.get("aug_ops", ()) else ("crop", "hflip")
    train.aug = common.aug_config(p["crop_size"], ops)
    train.aug.global_views = 1
    train.aug.crop.scale = (0.08, 1.0)
    return train


def get_eval_config(task: str, arg: str | None) -> ml_collections.ConfigDict:
    """The config of one evaluation task on the target dataset preset ``arg``."""
    name, p = common.preset(arg)
    config = ml_collections.ConfigDict()
    config.task = task
    config.checkpoint = config_dict.placeholder(str)  # run dir, weights file, or "random"
    config.normalisation = config_dict.placeholder(str)  # unset: the checkpoint's own (see interop)
    config.encoder_bands = ()  # the encoder's band names, where the checkpoint does not say
    config.seed = 0  # the random-init encoder's
    config.data = common.data_config(name)
    config.model = common.model_config(p["stem"])  # only for checkpoint="random"
    config.train = train_config("finetune" if task == "finetune" else "linear", name, p)
    config.eval = common.eval_config(p, config.train.aug.get_ref("crop_size"))
    config.eval.protocol = "ours"  # linear: "ours" (frozen features) or "reference" (see linear.py config)
    config.eval.label_fraction = 1.0
    config.eval.fraction_seed = 42  # the reference's random_subset seed
    config.eval.fraction_with_replacement = False  # True: the reference's sampling (duplicates possible)
    config.eval.per_batch_metric = False  # True: the reference's metric averaged over eval batches
    return config
