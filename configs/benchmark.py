"""The review's benchmark as one grid: ``python -m ssl4eo_jax.main --config=configs/benchmark.py:<preset>``.

Presets:
  demo    the whole grid on the synthetic demo data (stand-ins for BigEarthNet, So2Sat and EuroSAT with
          their band sets, ``ssl4eo_jax.data.demo.VARIANTS``) at toy scale: minutes on a CPU.
  test    the smallest grid that still runs every experiment (one method, tiny data): for the tests.
  review  the review's settings on the real archives (pre-training on BigEarthNet, So2Sat and SEN12MS,
          transfer to EuroSAT; epochs and learning rates of REFERENCE_SETTINGS.md). Needs
          ``--config.data.dirs.<dataset>=DIR`` for every dataset the enabled experiments use.

Experiments (``config.experiments.<name>.enabled``):
  methods    methods x pre-training datasets, linear probe (+ random-init and supervised baselines): Fig. 24
  augment    one method pre-trained with each augmentation arm, linear probe: Fig. 25
  fractions  label fractions, linear probe and fine-tuning vs supervised from scratch: Fig. 26
  transfer   pre-trained on one dataset, evaluated on another at several label fractions: Fig. 27

Overrides: ``config.model`` applies to every encoder (pre-trained and random; a key of the other model
family, a ResNet's ``width`` for a ViT, is skipped), ``config.model_overrides.<model>`` to that model's
encoders (``{"vit_s16": {"patch_size": 8}}``), ``config.pretrain`` to every pre-training config
(``configs/<method>.py:<dataset>``), ``config.method_overrides.<method>`` to that method's (its
``model.name`` switches its encoder, e.g. to ``vit_tiny``), ``config.eval_overrides.<all|knn|linear|finetune>``
to the evaluation configs (``configs/eval/<task>.py:<dataset>``), ``config.data`` to every dataset section.

Models: each method pre-trains its config's encoder (ResNet-18 for the review's methods; a ViT for
MoCo-v3, MAE, DINO-ViT), recorded as the cell's ``model``; the random-init and supervised baselines
run once per model of the grid's methods (``ssl4eo_jax.benchmark.grid``).
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.presets.pretrain import AUG_STUDY

REVIEW_METHODS = ("mocov2", "simsiam", "swav", "barlow")
REAL_DATASETS = ("bigearthnet", "so2sat", "sen12ms", "eurosat")
FRACTIONS = (1.0, 0.5, 0.1, 0.01, 0.001)


def _experiments(datasets: tuple[str, ...], source: str, target: str, arms: tuple[str, ...],
                 fractions: tuple[float, ...], transfer_fractions: tuple[float, ...]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "methods": {"enabled": True, "datasets": datasets, "protocols": ("linear",),
                    "baselines": ("random", "supervised")},
        "augment": {"enabled": True, "method": "barlow", "dataset": source, "arms": arms},
        "fractions": {"enabled": True, "dataset": source, "fractions": fractions,
                      "protocols": ("linear", "finetune"), "baselines": ("supervised",)},
        "transfer": {"enabled": True, "source": source, "target": target, "fractions": transfer_fractions,
                     "protocols": ("linear",), "baselines": ("random", "supervised")},
    })


def _base(preset: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "benchmark"
    config.preset = preset
    # The method and evaluation configs of the grid's cells: the files beside this one.
    config.configs_dir = os.path.dirname(os.path.abspath(__file__))
    config.methods = REVIEW_METHODS
    config.seeds = (0,)
    config.linear_protocol = "ours"  # or "reference" (configs/eval/linear.py)
    config.metric_split = "test"
    config.data = ml_collections.ConfigDict({
        "dirs": {name: config_dict.placeholder(str) for name in REAL_DATASETS},
        "cache_dir": config_dict.placeholder(str),
    })
    config.model = ml_collections.ConfigDict()
    config.model_overrides = ml_collections.ConfigDict()
    config.pretrain = ml_collections.ConfigDict()
    config.method_overrides = ml_collections.ConfigDict()
    config.eval_overrides = ml_collections.ConfigDict({"all": {}, "knn": {}, "linear": {}, "finetune": {}})
    return config


def _demo(preset: str) -> ml_collections.ConfigDict:
    config = _base(preset)
    config.experiments = _experiments(("demo_ben", "demo_so2sat"), "demo_ben", "demo_eurosat",
                                      ("full", "no_crop", "crop_only_0.5"), (1.0, 0.1, 0.01), (1.0, 0.1, 0.01))
    config.data.update({"demo_train": 1000, "demo_val": 250, "demo_test": 250, "demo_size": 36, "workers": 0})
    config.model = ml_collections.ConfigDict({"width": 16})
    config.pretrain = ml_collections.ConfigDict({
        "data": {"global_batch": 64}, "aug": {"crop_size": 32}, "train": {"epochs": 2.0, "log_every": 8},
    })
    config.method_overrides = ml_collections.ConfigDict({"barlow": {"barlow": {"projector": (128, 128, 128)}}})
    config.eval_overrides = ml_collections.ConfigDict({
        "all": {"eval": {"batch": 128}, "train": {"batch": 64, "workers": 0, "log_every": 8}},
        "knn": {}, "linear": {"eval": {"linear": {"epochs": 30}}, "train": {"epochs": 4.0, "optim": {"milestones": (3,)}}},
        "finetune": {"train": {"epochs": 3.0, "base_lr": 1.6, "optim": {"milestones": (2,)}}},
    })
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "demo"
    if preset == "demo":
        return _demo(preset)
    if preset == "test":
        config = _demo(preset)
        config.methods = ("barlow",)
        config.experiments = _experiments(("demo_ben",), "demo_ben", "demo_eurosat", ("full", "crop_only_0.5"),
                                          (1.0, 0.25), (0.5,))
        config.data.update({"demo_train": 64, "demo_val": 32, "demo_test": 32, "demo_size": 24})
        config.pretrain.aug.crop_size = 24
        config.pretrain.data.global_batch = 32
        config.pretrain.train = ml_collections.ConfigDict({"steps": 2, "log_every": 1})
        config.method_overrides.barlow.barlow.projector = (32, 32, 32)
        config.eval_overrides.all.eval.batch = 32
        config.eval_overrides.all.train.batch = 32
        config.eval_overrides.linear.eval.linear.epochs = 3
        config.eval_overrides.linear.train = ml_collections.ConfigDict({"steps": 2})
        config.eval_overrides.finetune.train = ml_collections.ConfigDict({"steps": 2})
        return config
    if preset == "review":
        config = _base(preset)
        # Pre-training on the three archives, the augmentation study and the label fractions on
        # BigEarthNet, transfer BigEarthNet -> EuroSAT (REFERENCE_SETTINGS.md 1.6-1.7).
        config.experiments = _experiments(("bigearthnet", "so2sat", "sen12ms"), "bigearthnet", "eurosat",
                                          tuple(AUG_STUDY), FRACTIONS, (1.0, 0.1, 0.01))
        config.linear_protocol = "reference"
        config.data.update({"workers": 4})
        return config
    raise ConfigError(f"Unknown benchmark preset {preset!r}; choose demo, test or review.")
