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

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.presets import pretrain as common

REFERENCE_GLOBAL_BATCH = 1024
# Recipes of config.train (``--config=configs/eval/finetune.py:<dataset>,recipe=<name>``).
RECIPES = ("reference", "mae")
# config.model keys of a ViT (ssl4eo_jax/models/vit.py), for checkpoint="random"; unset: the name's.
VIT_MODEL_KEYS = {"patch_size": config_dict.placeholder(int), "depth": config_dict.placeholder(int), "pool": "token",
                  "pos_embed": "learned", "weight_init": "xavier"}

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
    train.layer_decay = 1.0  # < 1: layer-wise lr decay of a ViT's blocks (MAE's recipe); 1.0: off (ResNets)
    return train


def mae_finetune_recipe(config: ml_collections.ConfigDict) -> None:
    """MAE's fine-tuning recipe (facebookresearch/mae FINETUNE.md, ``main_finetune.py``, ViT-B):
    AdamW (betas 0.9, 0.999), blr 5e-4 at batch 256 (``lr = blr * batch / 256``; ViT-L/H: 1e-3),
    weight decay 0.05 (none on 1-D parameters, ``pos_embed``, ``cls_token``), layer-wise lr decay
    0.65 (ViT-L/H: 0.75), 5 warm-up epochs then a cosine to 0 (MAE: to ``min_lr`` 1e-6), 100 epochs,
    RandomResizedCrop + flip, the mean of the patch tokens as the feature (``global_pool``). Not
    implemented: drop-path 0.1, mixup 0.8 / cutmix 1.0, label smoothing 0.1, RandAugment, random
    erasing 0.25, and ``fc_norm`` (the mean here is of the tokens after the pre-trained final norm)."""
    train = config.train
    train.epochs = 100.0
    train.base_lr = 5e-4  # MAE's blr: at a batch of 256
    train.layer_decay = 0.65
    train.optim = ml_collections.ConfigDict({
        "name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 0.05, "schedule": "cosine", "warmup_epochs": 5.0,
        "end_lr_fraction": 0.0,
    })
    train.optim.lr = train.get_ref("base_lr") * train.get_ref("batch") / common.REFERENCE_BATCH
    config.eval.pool = "mean"
    config.model.name = "vit_b16"  # checkpoint="random": a ViT-B/16 trained from scratch


def split_recipe(arg: str | None) -> tuple[str | None, str]:
    """``"<dataset>[,recipe=<name>][,...]"`` -> (the argument without the recipe, the recipe)."""
    rest, recipe = [], "reference"
    for part in (arg or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "recipe":
            recipe = value
        elif part.strip():
            rest.append(part.strip())
    if recipe not in RECIPES:
        raise ConfigError(f"Unknown recipe {recipe!r} in {arg!r}; choose one of {', '.join(RECIPES)}.")
    return ",".join(rest) or None, recipe


def get_eval_config(task: str, arg: str | None) -> ml_collections.ConfigDict:
    """The config of one evaluation task on the target dataset preset ``arg`` (with
    ``recipe=mae``, fine-tuning in MAE's recipe)."""
    arg, recipe = split_recipe(arg)
    if recipe != "reference" and task != "finetune":
        raise ConfigError(f"recipe={recipe} is a fine-tuning recipe: use configs/eval/finetune.py.")
    name, p = common.preset(arg)
    config = ml_collections.ConfigDict()
    config.task = task
    config.checkpoint = config_dict.placeholder(str)  # run dir, weights file, or "random"
    config.normalisation = config_dict.placeholder(str)  # unset: the checkpoint's own (see interop)
    config.encoder_bands = ()  # the encoder's band names, where the checkpoint does not say
    config.seed = 0  # the random-init encoder's
    config.data = common.data_config(name)
    config.model = common.model_config(p["stem"])  # only for checkpoint="random"
    for key, value in VIT_MODEL_KEYS.items():  # used when config.model.name is a ViT (vit_tiny, vit_s16, vit_b16)
        if key not in config.model:
            config.model[key] = value
    config.train = train_config("finetune" if task == "finetune" else "linear", name, p)
    config.eval = common.eval_config(p, config.train.aug.get_ref("crop_size"))
    config.eval.protocol = "ours"  # linear: "ours" (frozen features) or "reference" (see linear.py config)
    config.eval.label_fraction = 1.0
    config.eval.fraction_seed = 42  # the reference's random_subset seed
    config.eval.fraction_with_replacement = False  # True: the reference's sampling (duplicates possible)
    config.eval.per_batch_metric = False  # True: the reference's metric averaged over eval batches
    # A ViT's feature: "token" (class token) or "mean" (mean of the patch tokens); unset: the
    # encoder's own (a run's config.model.pool, config.model.pool for "random"). ResNets: "mean" only.
    config.eval.pool = config_dict.placeholder(str)
    if "img_size" not in config.model:  # a ViT's position embeddings, for checkpoint="random"
        config.model.img_size = config.train.aug.get_ref("crop_size")
    if recipe == "mae":
        mae_finetune_recipe(config)
    return config
