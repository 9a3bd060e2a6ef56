"""The cells of a benchmark preset: (experiment, method, pre-training dataset, augmentation arm,
label fraction, protocol, target dataset, seed, model).

``method`` is an SSL method of ``ssl4eo_jax.methods`` (pre-trained first), or a baseline:
``random`` (the randomly initialised encoder, evaluated frozen) or ``supervised`` (trained from
scratch on the target: the fine-tuning protocol from random init). An unknown method name is a
``ConfigError`` before anything runs.

``model`` is the cell's encoder (``resnet18``, ``vit_s16``, ...): a method's comes from its config
with the grid's overrides (``cell_configs``); the baselines run once per model of the grid's
methods, so a grid with ResNet and ViT methods has random-init and supervised cells of each.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ssl4eo_jax.benchmark.cell_configs import grid_configs_dir, method_model
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods import METHODS
from ssl4eo_jax.presets.pretrain import model_config

BASELINES = ("random", "supervised")
# The presets' encoder: a baseline on another one names its model in its evaluation's identity.
DEFAULT_MODEL = model_config("imagenet")["name"]


@dataclasses.dataclass(frozen=True)
class Cell:
    experiment: str
    method: str
    pretrain: str | None  # pre-training dataset; None for baselines
    aug: str
    fraction: float
    protocol: str  # knn | linear | finetune
    target: str
    seed: int
    model: str  # the encoder, e.g. resnet18, vit_s16

    @property
    def eval_id(self) -> str:
        """The evaluation's identity: the same for equal evaluations of different experiments. (A
        pre-trained encoder's model is its method's; a baseline's is named unless it is the default.)"""
        if self.pretrain:
            source = f"{self.method}-{self.pretrain}-{self.aug}"
        else:
            source = self.method if self.model == DEFAULT_MODEL else f"{self.method}-{self.model}"
        return f"{source}--{self.protocol}-{self.target}-f{self.fraction:g}-s{self.seed}"

    @property
    def pretrain_id(self) -> str | None:
        return f"{self.method}_{self.pretrain}_{self.aug}_s{self.seed}" if self.pretrain else None


def available_methods(methods: Any, directory: str) -> list[str]:
    """The preset's methods, each checked to have a registered implementation and a config file."""
    for name in methods:
        if name not in METHODS or not os.path.isfile(os.path.join(directory, f"{name}.py")):
            raise ConfigError(f"Benchmark method {name!r} is unknown: choose from {sorted(METHODS)} "
                              f"(ssl4eo_jax.methods.METHODS with a configs/<method>.py).")
    return list(methods)


def _baseline_protocol(baseline: str) -> str:
    return "finetune" if baseline == "supervised" else "linear"


def expand(config: Any) -> list[Cell]:
    """Every cell of ``config.experiments``' enabled experiments, in run order, without duplicates."""
    methods = available_methods(config.methods, grid_configs_dir(config))
    ex = config.experiments
    cells: list[Cell] = []
    models: dict[tuple[str, str], str] = {}

    def model_of(method: str, dataset: str) -> str:
        if (method, dataset) not in models:
            models[(method, dataset)] = method_model(config, method, dataset)
        return models[(method, dataset)]

    def add(*args: Any, model: str) -> None:
        for seed in config.seeds:
            cells.append(Cell(*args, seed=int(seed), model=model))

    def block(experiment: str, source: str, target: str, fractions: Any, protocols: Any, baselines: Any) -> None:
        for fraction in fractions:
            for method in methods:
                for protocol in protocols:
                    add(experiment, method, source, "full", float(fraction), protocol, target,
                        model=model_of(method, source))
            for baseline in baselines:
                for name in dict.fromkeys(model_of(m, source) for m in methods):
                    add(experiment, baseline, None, "full", float(fraction), _baseline_protocol(baseline), target,
                        model=name)

    if ex.methods.enabled:
        for dataset in ex.methods.datasets:
            block("methods", dataset, dataset, (1.0,), ex.methods.protocols, ex.methods.baselines)
    if ex.augment.enabled:
        available_methods((ex.augment.method,), grid_configs_dir(config))
        for arm in ex.augment.arms:
            add("augment", ex.augment.method, ex.augment.dataset, arm, 1.0, "linear", ex.augment.dataset,
                model=model_of(ex.augment.method, ex.augment.dataset))
    if ex.fractions.enabled:
        block("fractions", ex.fractions.dataset, ex.fractions.dataset, ex.fractions.fractions, ex.fractions.protocols,
              ex.fractions.baselines)
    if ex.transfer.enabled:
        block("transfer", ex.transfer.source, ex.transfer.target, ex.transfer.fractions, ex.transfer.protocols,
              ex.transfer.baselines)
    return list(dict.fromkeys(cells))


def datasets_used(cells: list[Cell]) -> list[str]:
    return list(dict.fromkeys([c.pretrain for c in cells if c.pretrain] + [c.target for c in cells]))
