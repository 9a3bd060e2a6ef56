"""Defaults shared by every config, and the per-dataset presets (``--config=configs/<m>.py:<preset>``).

Values derived from others are ``FieldReference``s, so they follow command-line overrides: the
learning rates scale with ``data.global_batch`` (linear scaling from the reference batch of 256),
the evaluation size follows ``aug.crop_size``.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from ssl4eo_jax.errors import ConfigError

REFERENCE_BATCH = 256

# Per-dataset settings. Patch sizes and crops follow the SSL4EO review's reference code where it
# has them (BigEarthNet 128 px patches, 112 px crops; So2Sat 32 px with a 3x3 stem).
DATASET_PRESETS = {
    "demo": dict(crop_size=32, eval_crop_fraction=1.0, stem="imagenet", epochs=14, warmup_epochs=None,
                 log_every=5, checkpoint_every=50),
    "bigearthnet": dict(crop_size=112, eval_crop_fraction=0.875, stem="imagenet", epochs=100, warmup_epochs=0.0,
                        log_every=50, checkpoint_every=1000),
    "sen12ms": dict(crop_size=112, eval_crop_fraction=0.875, stem="imagenet", epochs=100, warmup_epochs=0.0,
                    log_every=50, checkpoint_every=1000),
    "eurosat": dict(crop_size=56, eval_crop_fraction=1.0, stem="imagenet", epochs=100, warmup_epochs=0.0,
                    log_every=50, checkpoint_every=1000),
    "so2sat": dict(crop_size=32, eval_crop_fraction=1.0, stem="small", epochs=100, warmup_epochs=0.0,
                   log_every=50, checkpoint_every=1000, aug_ops=("pad_crop", "blur", "hflip")),
    "ssl4eo_s12": dict(crop_size=224, eval_crop_fraction=0.875, stem="imagenet", epochs=100, warmup_epochs=0.0,
                       log_every=50, checkpoint_every=1000),
}
# The demo's stand-ins for BigEarthNet (12 bands, multi-label), So2Sat (10 bands) and EuroSAT
# (13 bands) are synthetic like the demo and train with its settings (ssl4eo_jax.data.demo.VARIANTS).
DATASET_PRESETS.update({name: DATASET_PRESETS["demo"] for name in ("demo_ben", "demo_so2sat", "demo_eurosat")})


# The review's full augmentation pipeline for 12/13-band patches (REFERENCE_SETTINGS.md 1.4), in order.
FULL_AUG_OPS = ("crop", "brightness_contrast", "grayscale", "blur", "hflip", "band_drop")

# The augmentation study (review Fig. 25): the full pipeline, each op removed, crop only at three
# minimum scales, and no crop. Select with --config=configs/<method>.py:<dataset>,aug=<name>.
AUG_STUDY = {
    "full": {},
    "no_crop": {"ops": tuple(op for op in FULL_AUG_OPS if op != "crop")},
    **{f"no_{op}": {"ops": tuple(o for o in FULL_AUG_OPS if o != op)} for op in FULL_AUG_OPS if op != "crop"},
    **{f"crop_only_{s}": {"ops": ("crop",), "crop.scale": (s, 1.0)} for s in (0.2, 0.5, 0.8)},
}


CONFIG_OPTIONS = ("aug", "arch")  # aug: an AUG_STUDY arm; arch: resnet or vit (a method's ViT recipe)


def parse_arg(arg: str | None) -> tuple[str, dict[str, str]]:
    """``"<dataset>[,key=value...]"`` -> (dataset, options); e.g. ``"bigearthnet,aug=crop_only_0.8"``,
    ``"demo,arch=vit"``."""
    parts = [p.strip() for p in (arg or "demo").split(",") if p.strip()]
    name, options = (parts[0] if parts else "demo"), {}
    for part in parts[1:]:
        if "=" not in part:
            raise ConfigError(f"Config option {part!r} in {arg!r} must look like key=value (e.g. aug=no_blur).")
        key, value = part.split("=", 1)
        if key not in CONFIG_OPTIONS:
            raise ConfigError(f"Unknown config option {key!r} in {arg!r}; known: {', '.join(CONFIG_OPTIONS)}.")
        if key == "arch" and value not in ("resnet", "vit"):
            raise ConfigError(f"Config option arch={value!r} in {arg!r}; use arch=resnet or arch=vit.")
        options[key] = value
    return name, options


def preset(arg: str | None) -> tuple[str, dict]:
    """The dataset preset named by the config argument (default: the embedded demo data)."""
    name, _ = parse_arg(arg)
    if name not in DATASET_PRESETS:
        raise ConfigError(
            f"Unknown dataset preset {name!r} (the part after ':' in --config=configs/<method>.py:<preset>); "
            f"choose one of {', '.join(sorted(DATASET_PRESETS))}."
        )
    return name, DATASET_PRESETS[name]


def aug_config(crop_size: int, ops: tuple[str, ...] = FULL_AUG_OPS) -> ml_collections.ConfigDict:
    """The reference view pipeline with every op's parameters (ops not listed stay inactive)."""
    aug = ml_collections.ConfigDict()
    aug.ops = ops
    aug.crop_size = crop_size
    aug.global_views = 2
    aug.local_views = 0
    aug.local_crop_size = max(8, (crop_size * 3) // 7)  # DINO: 96 for 224
    aug.local_crop_scale = (0.05, 0.4)
    aug.global_overrides = ()  # per global view {op: {param: value}}, e.g. DINO's blur/solarize
    aug.local_overrides = {}
    aug.crop = ml_collections.ConfigDict({"scale": (0.2, 1.0), "ratio": (3 / 4, 4 / 3)})
    aug.pad_crop = ml_collections.ConfigDict({"padding": 4})
    aug.brightness_contrast = ml_collections.ConfigDict({"p": 0.8, "brightness": 0.4, "contrast": 0.4})
    aug.brightness = ml_collections.ConfigDict({"p": 0.8, "brightness": 0.4})
    aug.contrast = ml_collections.ConfigDict({"p": 0.8, "contrast": 0.4})
    aug.grayscale = ml_collections.ConfigDict({"p": 0.2})
    aug.blur = ml_collections.ConfigDict({"p": 0.5, "sigma": (0.1, 2.0)})
    aug.hflip = ml_collections.ConfigDict({"p": 0.5})
    aug.vflip = ml_collections.ConfigDict({"p": 0.5})
    aug.rot90 = ml_collections.ConfigDict({"p": 1.0})
    aug.solarize = ml_collections.ConfigDict({"p": 0.2, "threshold": 0.0})
    aug.noise = ml_collections.ConfigDict({"p": 0.5, "std": 0.05})
    aug.band_drop = ml_collections.ConfigDict({"p": 0.5, "max_bands": 6})
    return aug


def apply_aug_study(aug: ml_collections.ConfigDict, name: str) -> None:
    """Sets ``aug`` to one arm of the augmentation study."""
    if name not in AUG_STUDY:
        raise ConfigError(f"Unknown augmentation preset {name!r}; choose one of {', '.join(AUG_STUDY)}.")
    for key, value in AUG_STUDY[name].items():
        node = aug
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value


def data_config(name: str) -> ml_collections.ConfigDict:
    """``config.data``: which dataset (a converted directory, or the demo data) and how to read it."""
    data = ml_collections.ConfigDict()
    data.name = name
    data.dir = config_dict.placeholder(str)  # a converted dataset; unset for the demo data
    data.cache_dir = config_dict.placeholder(str)  # where the demo data is cached
    data.global_batch = REFERENCE_BATCH
    data.workers = 1  # Grain worker processes (0: decode in the main process)
    data.threads = 2
    data.demo_size = 48
    data.demo_seed = 0
    data.demo_train = 4000
    data.demo_val = 1000
    data.demo_test = 1000
    return data


def model_config(stem: str) -> ml_collections.ConfigDict:
    """``config.model``: the ResNet encoder."""
    return ml_collections.ConfigDict(
        # dtype "auto": bfloat16 compute on GPU/TPU, float32 on CPU (ssl4eo_jax/precision.py).
        {"name": "resnet18", "stem": stem, "width": 64, "zero_init_residual": False, "dtype": "auto"})


def arch(arg: str | None, default: str = "resnet") -> str:
    """The ``arch=`` option of the config argument (``resnet`` or ``vit``), else ``default``."""
    return parse_arg(arg)[1].get("arch", default)


def vit_section(name: str, img_size: Any, patch_size: int | None = None, pos_embed: str = "learned",
                weight_init: str = "xavier", dtype: str = "auto") -> ml_collections.ConfigDict:
    """``config.model`` for the ViT ``name`` (``models/vit.py`` ``VIT_SIZES``: its depth, and its patch
    size unless ``patch_size``); its position embeddings are for ``img_size`` px (a value or a
    ``FieldReference`` that follows the crop size)."""
    from ssl4eo_jax.models.vit import VIT_SIZES  # the presets stay importable without the models

    _, depth, _, patch = VIT_SIZES[name]
    return ml_collections.ConfigDict({
        "name": name, "patch_size": patch_size or patch, "depth": depth, "img_size": img_size, "pool": "token",
        "pos_embed": pos_embed, "weight_init": weight_init, "dtype": dtype,
    })


def vit_model_config(arg: str | None, crop_size: config_dict.FieldReference, pos_embed: str = "learned",
                     weight_init: str = "xavier") -> ml_collections.ConfigDict:
    """``config.model`` for a ViT: SSL4EO-S12's ViT-S/16 on the dataset presets; on the demo presets
    timm's ViT-Ti (192 wide, 12 blocks, 3 heads) with 8 px patches, so a 32 px crop is 4 x 4 patches
    (a 16 px patch would leave 2 x 2). ``img_size`` follows the crop size."""
    demo = is_demo(arg)
    return vit_section("vit_tiny" if demo else "vit_s16", crop_size, 8 if demo else None, pos_embed, weight_init)


def eval_config(p: dict, size: config_dict.FieldReference) -> ml_collections.ConfigDict:
    """``config.eval``: the frozen-encoder protocols (evaluation view, kNN, our linear probe)."""
    ev = ml_collections.ConfigDict()
    ev.enabled = True
    ev.batch = REFERENCE_BATCH
    ev.size = size
    ev.crop_fraction = p["eval_crop_fraction"]
    ev.multi_label = config_dict.placeholder(bool)  # unset: the manifest's task
    # BatchNorm statistics of every evaluated frozen encoder, pre-trained and random alike:
    # "recompute" re-estimates them on clean train images (ssl4eo_jax/evaluators/features.py);
    # "running" keeps the stored ones (a random init's are mean 0, variance 1).
    ev.bn = "recompute"
    ev.knn = ml_collections.ConfigDict({"k": 20, "temperature": 0.07})
    ev.linear = ml_collections.ConfigDict(
        {"epochs": 100, "batch": 256, "lr": 1e-3, "weight_decays": (0.0, 1e-4, 1e-3, 1e-2)}
    )
    return ev


def base_config(method: str, arg: str | None) -> ml_collections.ConfigDict:
    """Everything but the method's own section and optimizer."""
    name, p = preset(arg)
    _, options = parse_arg(arg)
    config = ml_collections.ConfigDict()
    config.task = "pretrain"
    config.method = method
    config.seed = 0
    config.distributed = "none"  # none | auto | slurm | tpu | explicit (see ssl4eo_jax/distributed.py)
    config.cluster = ml_collections.ConfigDict({"coordinator": "", "num_processes": 0, "process_id": -1,
                                                # a process silent this long is taken for dead and the
                                                # others stop (jax.distributed's heartbeat timeout)
                                                "heartbeat_seconds": 100})
    # model > 1: a 2-D (data, model) mesh, parameters and optimizer state sharded over `model` (FSDP,
    # ssl4eo_jax/sharding.py) for models that do not fit one device; 1: replicated (data parallel)
    config.mesh = ml_collections.ConfigDict({"model": 1})
    config.data = data_config(name)
    config.model = model_config(p["stem"])

    config.aug = aug_config(p["crop_size"], tuple(p.get("aug_ops", FULL_AUG_OPS)))
    for key, value in p.get("aug_params", {}).items():
        config.aug[key].update(value)
    config.aug.study = options.get("aug", "full")
    apply_aug_study(config.aug, config.aug.study)

    config.train = ml_collections.ConfigDict()
    config.train.epochs = float(p["epochs"])
    config.train.steps = 0  # > 0 overrides epochs
    config.train.log_every = p["log_every"]
    config.train.checkpoint_every = p["checkpoint_every"]
    config.train.keep_checkpoints = 2
    config.train.transfer_guard = "allow"  # "disallow": any implicit host<->device copy in the loop fails
    config.train.log_all_processes = False  # also write metrics.process<i>.jsonl on every other process
    config.train.tensorboard = True  # TensorBoard event files in the work dir (tensorboard --logdir runs)
    config.train.profile_steps = ""  # "<first>,<last>": a jax.profiler trace of those steps in <workdir>/profile

    config.eval = eval_config(p, config.aug.get_ref("crop_size"))
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Any) -> None:
    """Sets ``{"model": {"width": 16}}`` or ``{"model.width": 16}`` style values; unknown keys fail."""
    for key, value in dict(overrides).items():
        node = config
        *parents, leaf = str(key).split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"Override {key!r}: the config has no such key.")
        if isinstance(node[leaf], ml_collections.ConfigDict) and isinstance(value, (dict, ml_collections.ConfigDict)):
            apply_overrides(node[leaf], value)
        else:
            node[leaf] = value


def scaled_lr(config: ml_collections.ConfigDict, base: str) -> config_dict.FieldReference:
    """``config.optim.<base> * global_batch / 256`` as a reference that follows overrides."""
    return config.optim.get_ref(base) * config.data.get_ref("global_batch") / REFERENCE_BATCH


def is_demo(arg: str | None) -> bool:
    """Whether the preset is the embedded demo data (or a demo stand-in: ``demo_*``)."""
    return preset(arg)[0].startswith("demo")


def short_run(arg: str | None, reference: Any) -> Any:
    """``reference`` on the real-dataset presets; on the demo presets an unset value of the same type
    that ``ssl4eo_jax.short_run`` derives from the run's size when training starts."""
    return config_dict.placeholder(type(reference)) if is_demo(arg) else reference


def warmup_epochs(arg: str | None) -> Any:
    """The preset's warm-up (none in the review's reference scripts); the demo presets derive it
    (10 % of the run for every method: ``ssl4eo_jax.short_run`` rule 1)."""
    return short_run(arg, float(preset(arg)[1]["warmup_epochs"] or 0.0))


def add_monitor(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """``config.monitor`` (collapse watch), ``config.evals`` (evaluators run during training: ``knn``,
the kNN evaluator on a small bank every ``every`` steps, whose best checkpoint is kept) and
``config.eval.use_best``.

    The collapse threshold is on ``embedding_std_rel`` = std of the L2-normalised embeddings x
    sqrt(dim): ~1 for embeddings spread over the sphere, 0 at complete collapse. ``patience`` counts
    consecutive log points (``train.log_every``) below it, from ``start_epoch`` on: a randomly
    initialised encoder with a head without BN (MoCo) starts near 0.1 and spreads out as it learns.
    """
    demo = is_demo(arg)
    config.monitor = ml_collections.ConfigDict({
        "enabled": True,
        "std_threshold": 0.05,
        "patience": 5,
        "start_epoch": 1.0,
        "stop_on_collapse": False,
    })
    config.evals = ml_collections.ConfigDict({"knn": {
        "every": 50 if demo else 500,  # steps between runs (0: off); the last step always runs
        "bank": 500 if demo else 2000,  # first train patches: the kNN bank
        "queries": 250 if demo else 1000,  # first val (else test) patches: the queries
        "keep_best": True,  # keep the checkpoint with the best score in <workdir>/checkpoints_best
    }, "linear": {  # our linear probe on such a subset (off by default); its weight decay is chosen on the queries
        "every": 0, "bank": 500 if demo else 2000, "queries": 250 if demo else 1000, "keep_best": False,
    }})
    config.eval.use_best = False  # evaluate the best-kNN checkpoint instead of the last one
    return config


def optimizer(config: ml_collections.ConfigDict, name: str, base_lr: float, weight_decay: float,
              **settings: object) -> ml_collections.ConfigDict:
    """``config.optim``: ``name`` with ``base_lr`` at global batch 256 (``lr`` follows the batch;
    with LARS, ``base_lr_biases`` too), momentum 0.9, a cosine schedule without warm-up and no
    gradient clipping unless ``settings`` say otherwise (see ``ssl4eo_jax.optim``)."""
    optim = ml_collections.ConfigDict({
        "name": name, "base_lr": base_lr, "momentum": 0.9, "weight_decay": weight_decay, "schedule": "cosine",
        "warmup_epochs": settings.pop("warmup_epochs", 0.0), "per_epoch": False, "end_lr_fraction": 0.0,
        "clip_grad": 0.0,
    })
    if name == "lars":
        optim.update({"eta": 0.001, "base_lr_biases": base_lr})
    if name == "sgd":
        optim.weight_decay_1d = True  # PyTorch's SGD decays biases and norms too
    optim.update(settings)
    config.optim = optim
    config.optim.lr = scaled_lr(config, "base_lr")
    if name == "lars":
        config.optim.lr_biases = scaled_lr(config, "base_lr_biases")
    return config.optim


def published_warmup(arg: str | None) -> Any:
    """The 10 warm-up epochs of the BYOL, SimCLR, VICReg and DINO recipes (the demo presets: 10 % of
    the run, as every method's)."""
    return short_run(arg, 10.0)


def asymmetric_views(config: ml_collections.ConfigDict, local_blur: float | None = None) -> None:
    """BYOL's asymmetric global views (also VICReg's and DINO's): blur p 1.0 on view 1 and 0.1 on
    view 2, solarisation p 0.2 on view 2 only; local views (DINO) blur with ``local_blur`` and are
    never solarised."""
    if "solarize" not in config.aug.ops:
        config.aug.ops = tuple(config.aug.ops) + ("solarize",)
    config.aug.global_overrides = ({"blur": {"p": 1.0}, "solarize": {"p": 0.0}},
                                   {"blur": {"p": 0.1}, "solarize": {"p": 0.2}})
    if local_blur is not None:
        config.aug.local_overrides = {"blur": {"p": local_blur}, "solarize": {"p": 0.0}}
