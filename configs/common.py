"""Defaults shared by every config, and the per-dataset presets (``--config=configs/<m>.py:<preset>``).

Values derived from others are ``FieldReference``s, so they follow command-line overrides: the
learning rates scale with ``data.global_batch`` (linear scaling from the reference batch of 256),
the evaluation size follows ``aug.crop_size``.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from ssl4eo_jax.errors import ConfigError

REFERENCE_BATCH = 256

# Per-dataset settings. Patch sizes and crops follow the SSL4EO review's reference code where it
# has them (BigEarthNet 128 px patches, 112 px crops; So2Sat 32 px with a 3x3 stem).
DATASET_PRESETS = {
    "demo": dict(crop_size=32, eval_crop_fraction=1.0, stem="imagenet", epochs=14, warmup_epochs=2.0,
                 log_every=5, checkpoint_every=50),
    "bigearthnet": dict(crop_size=112, eval_crop_fraction=0.875, stem="imagenet", epochs=100, warmup_epochs=0.0,
                        log_every=50, checkpoint_every=1000),
    "sen12ms": dict(crop_size=112, eval_crop_fraction=0.875, stem="imagenet", epochs=100, warmup_epochs=0.0,
                    log_every=50, checkpoint_every=1000),
    "eurosat": dict(crop_size=56, eval_crop_fraction=1.0, stem="imagenet", epochs=100, warmup_epochs=0.0,
                    log_every=50, checkpoint_every=1000),
    "so2sat": dict(crop_size=32, eval_crop_fraction=1.0, stem="small", epochs=100, warmup_epochs=0.0,
                   log_every=50, checkpoint_every=1000),
    "ssl4eo_s12": dict(crop_size=224, eval_crop_fraction=0.875, stem="imagenet", epochs=100, warmup_epochs=0.0,
                       log_every=50, checkpoint_every=1000),
}


def preset(arg: str | None) -> tuple[str, dict]:
    """The dataset preset named by the config argument (default: the embedded demo data)."""
    name = (arg or "demo").strip()
    if name not in DATASET_PRESETS:
        raise ConfigError(
            f"Unknown dataset preset {name!r} (the part after ':' in --config=configs/<method>.py:<preset>); "
            f"choose one of {', '.join(sorted(DATASET_PRESETS))}."
        )
    return name, DATASET_PRESETS[name]


def base_config(method: str, arg: str | None) -> ml_collections.ConfigDict:
    """Everything but the method's own section and optimizer."""
    name, p = preset(arg)
    config = ml_collections.ConfigDict()
    config.task = "pretrain"
    config.method = method
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = name
    config.data.dir = config_dict.placeholder(str)  # a converted dataset; unset for the demo data
    config.data.cache_dir = config_dict.placeholder(str)  # where the demo data is cached
    config.data.global_batch = REFERENCE_BATCH
    config.data.workers = 1  # Grain worker processes (0: decode in the main process)
    config.data.threads = 2
    config.data.demo_size = 48
    config.data.demo_seed = 0
    config.data.demo_train = 4000
    config.data.demo_val = 1000
    config.data.demo_test = 1000

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    config.model.stem = p["stem"]
    config.model.width = 64
    config.model.zero_init_residual = False
    config.model.dtype = "float32"

    config.aug = ml_collections.ConfigDict()
    config.aug.crop_size = p["crop_size"]
    config.aug.crop_scale = (0.2, 1.0)
    config.aug.crop_ratio = (3 / 4, 4 / 3)
    config.aug.hflip = 0.5
    config.aug.vflip = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.epochs = float(p["epochs"])
    config.train.steps = 0  # > 0 overrides epochs
    config.train.log_every = p["log_every"]
    config.train.checkpoint_every = p["checkpoint_every"]
    config.train.keep_checkpoints = 2

    config.eval = ml_collections.ConfigDict()
    config.eval.enabled = True
    config.eval.batch = REFERENCE_BATCH
    config.eval.size = config.aug.get_ref("crop_size")
    config.eval.crop_fraction = p["eval_crop_fraction"]
    config.eval.multi_label = config_dict.placeholder(bool)  # unset: the manifest's task
    config.eval.knn = ml_collections.ConfigDict({"k": 20, "temperature": 0.07})
    config.eval.linear = ml_collections.ConfigDict(
        {"epochs": 100, "batch": 256, "lr": 1e-3, "weight_decays": (0.0, 1e-4, 1e-3, 1e-2)}
    )
    return config


def scaled_lr(config: ml_collections.ConfigDict, base: str) -> config_dict.FieldReference:
    """``config.optim.<base> * global_batch / 256`` as a reference that follows overrides."""
    return config.optim.get_ref(base) * config.data.get_ref("global_batch") / REFERENCE_BATCH


def warmup_epochs(arg: str | None) -> float:
    return float(preset(arg)[1]["warmup_epochs"])
