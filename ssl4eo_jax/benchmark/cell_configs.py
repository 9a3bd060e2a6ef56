"""The configs of a grid's cells: a pre-training (``configs/<method>.py:<dataset>[,aug=<arm>]``) and an
evaluation (``configs/eval/<protocol>.py:<target>``), each with the preset's overrides, and the
encoder section (``config.model``) of each.

Encoders: a method's is its config's (a ResNet, or a ViT for MoCo-v3, MAE, DINO-ViT), then the
grid's model overrides in order: ``config.model`` (every encoder; a key of the other model family,
a ResNet's ``width`` for a ViT, is skipped), the ``model`` part of ``config.pretrain`` and of
``config.method_overrides.<method>`` (a ``name`` there switches the method's encoder, e.g. to
``vit_tiny``), then ``config.model_overrides.<model name>``. A baseline cell's encoder is that of the
first grid method with its model (e.g. the ViT-Ti/8 of the ViT methods on the demo presets), with
its position embeddings at the evaluation's size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ml_collections

from ssl4eo_jax.bench.models import apply_model_overrides, split_model_overrides, switch_model
from ssl4eo_jax.presets.files import configs_dir, get_config
from ssl4eo_jax.presets.pretrain import apply_overrides

if TYPE_CHECKING:
    from ssl4eo_jax.benchmark.grid import Cell


def grid_configs_dir(config: Any) -> str:
    """Where the grid's method and evaluation config files are: beside the benchmark config."""
    return config.get("configs_dir") or configs_dir()


def data_overrides(config: Any, name: str) -> dict[str, Any]:
    data = {k: v for k, v in config.data.items() if k != "dirs"}
    data["dir"] = None if name.startswith("demo") else config.data.dirs.get(name)
    return data


def grid_model(config: Any, section: ml_collections.ConfigDict, img_size: int, own: list[Any],
               name: str | None = None) -> ml_collections.ConfigDict:
    """``section`` with the grid's model overrides: ``config.model`` (lenient), switched to ``name``
    if given, the ``own`` model overrides in order, then ``config.model_overrides.<model name>``."""
    every = dict(config.model)
    grid_name = every.pop("name", None)
    section = switch_model(section, name or grid_name or section.name, img_size)
    section = apply_model_overrides(section, every, img_size, lenient=True)
    for overrides in own:
        section = apply_model_overrides(section, overrides, img_size)
    per_model = config.get("model_overrides") or {}
    return apply_model_overrides(section, per_model.get(section.name, {}), img_size)


def method_config(config: Any, method: str, dataset: str, aug: str = "full") -> ml_collections.ConfigDict:
    """``configs/<method>.py:<dataset>[,aug=<arm>]`` with the preset's overrides, evaluation off."""
    arg = dataset if aug == "full" else f"{dataset},aug={aug}"
    cfg = get_config(method, arg, grid_configs_dir(config))
    apply_overrides(cfg, {"data": data_overrides(config, dataset)})
    pretrain_model, pretrain = split_model_overrides(config.pretrain)
    method_model, own = split_model_overrides(config.method_overrides.get(method, {}))
    apply_overrides(cfg, pretrain)
    apply_overrides(cfg, own)
    cfg.model = grid_model(config, cfg.model, int(cfg.aug.crop_size), [pretrain_model, method_model])
    cfg.eval.enabled = False  # the cells evaluate
    return cfg


def method_model(config: Any, method: str, dataset: str) -> str:
    """The name of the encoder that ``method`` pre-trains on ``dataset`` in this grid."""
    return str(method_config(config, method, dataset).model.name)


def baseline_model(config: Any, cell: Cell, size: int) -> ml_collections.ConfigDict | None:
    """A baseline's encoder: the first grid method's with the cell's model (its config on the target's
    preset), for ``size`` px inputs; None where no method has that model."""
    for method in config.methods:
        section = method_config(config, method, cell.target).model
        if section.name == cell.model:
            section = section.copy_and_resolve_references()  # img_size may follow the method's crop size
            if "img_size" in section:
                section.img_size = size
            return section
    return None


def pretrain_config(config: Any, cell: Cell) -> ml_collections.ConfigDict:
    """The cell's pre-training config (``method_config``) with its seed."""
    cfg = method_config(config, cell.method, cell.pretrain, cell.aug)
    cfg.seed = cell.seed
    return cfg


def eval_config(config: Any, cell: Cell, checkpoint: str) -> ml_collections.ConfigDict:
    """``configs/eval/<protocol>.py:<target>`` for the cell, with the preset's overrides. Its
    ``model`` (what a random init builds, and what the projection counts) is the cell's: the
    pre-training's section where it names another model than the evaluation config's."""
    cfg = get_config(f"eval/{cell.protocol}", cell.target, grid_configs_dir(config))
    apply_overrides(cfg, {"data": data_overrides(config, cell.target)})
    own = []
    for key in ("all", cell.protocol):
        model, rest = split_model_overrides(config.eval_overrides.get(key, {}))
        apply_overrides(cfg, rest)
        own.append(model)
    size = int(cfg.train.aug.crop_size)
    cfg.model = grid_model(config, cfg.model, size, own)
    if cell.model != cfg.model.name and cell.pretrain:
        cfg.model = pretrain_config(config, cell).model
    elif cell.model != cfg.model.name:
        cfg.model = baseline_model(config, cell, size) or grid_model(config, cfg.model, size, own, name=cell.model)
    cfg.checkpoint = checkpoint
    cfg.seed = cfg.train.seed = cell.seed
    cfg.eval.label_fraction = cell.fraction
    cfg.eval.fraction_seed = 42 + cell.seed
    if cell.protocol == "linear":
        cfg.eval.protocol = config.linear_protocol
    return cfg
