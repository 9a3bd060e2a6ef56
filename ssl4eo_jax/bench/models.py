"""The encoder section of a config (``config.model``) by model name, for the step bench's ``--model``
and the benchmark grid's cells: a ResNet (``models/resnet.py``) or a ViT (``models/vit.py``).

Naming a model of the other family (a ViT for a ResNet section, or back) replaces the section with
that model's default one; keys both sections have carry over (``dtype``; a ViT's ``img_size``,
``pool``, ``pos_embed``, ``weight_init``), except the size's own (``depth``, ``patch_size``).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.models import RESNETS, VITS, check_model
from ssl4eo_jax.models.vit import VIT_SIZES, is_vit
from ssl4eo_jax.presets.pretrain import apply_overrides, model_config, vit_section

SIZE_KEYS = ("depth", "patch_size")  # what a ViT's name decides


def default_section(name: str, img_size: int, dtype: str = "auto") -> ml_collections.ConfigDict:
    """``name``'s default ``config.model``; a ViT's position embeddings are for ``img_size`` px."""
    check_model(name)
    if not is_vit(name):
        section = model_config("imagenet")
        section.update({"name": name, "dtype": dtype})
        return section
    return vit_section(name, int(img_size), dtype=dtype)


# Every key of a model section of either family (for overrides that apply to every encoder).
MODEL_KEYS = frozenset(default_section(RESNETS[0], 224)) | frozenset(default_section(VITS[0], 224))


def switch_model(section: ml_collections.ConfigDict, name: str, img_size: int) -> ml_collections.ConfigDict:
    """``section`` for model ``name``: itself renamed within a family of the same layout, else
    ``name``'s default section with the keys both have carried over (not ``depth``, ``patch_size``)."""
    check_model(name)
    if name == section.name:
        return section
    if not is_vit(name) and not is_vit(section.name):  # ResNets share one layout
        section.name = name
        return section
    new = default_section(name, img_size)
    for key in new:
        if key in section and key not in ("name", *SIZE_KEYS):
            new[key] = section[key]
    return new


def apply_model_overrides(section: ml_collections.ConfigDict, overrides: Any, img_size: int,
                          lenient: bool = False) -> ml_collections.ConfigDict:
    """``overrides`` on ``section``, the name first (``switch_model``); returns the section (a new one
    after a family switch). ``lenient``: keys of the other family are skipped (a grid's ``width`` does
    nothing to a ViT), other unknown keys still fail."""
    values = dict(overrides or {})
    if "name" in values:
        section = switch_model(section, values.pop("name"), img_size)
    if lenient:
        values = {k: v for k, v in values.items() if k in section or k not in MODEL_KEYS}
    for key in values:
        if key in MODEL_KEYS and key not in section:
            kind = "a ViT" if is_vit(section.name) else "a ResNet"
            raise ConfigError(f"model.{key} is not a setting of {section.name} ({kind}).")
    apply_overrides(section, values)
    return section


def split_model_overrides(overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``model`` part, the rest) of ``{"model.width": 8, "model": {...}, "barlow.projector": ...}``."""
    model: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in dict(overrides or {}).items():
        if key == "model":
            model.update(dict(value))
        elif str(key).startswith("model."):
            model[str(key).removeprefix("model.")] = value
        else:
            rest[key] = value
    return model, rest


def model_label(section: Any) -> str:
    """``resnet18``, ``vit_s16``, or ``vit_s16 (patch 8)`` where the patch is not the name's."""
    name = section["name"]
    patch = section.get("patch_size") if is_vit(name) else None
    return f"{name} (patch {patch})" if patch and patch != VIT_SIZES[name][3] else name
