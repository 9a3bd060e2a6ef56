"""Loading encoders for evaluation: PyTorch ResNet weights (``load_torch_resnet``), timm ViT weights
(``load_torch_vit``) and, through one entry point for all, our own run directories
(``load_encoder_variables``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Sequence

import ml_collections
import numpy as np

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.interop import normalisation as norm
from ssl4eo_jax.interop.resnet_weights import detect_architecture, state_dict_to_encoder
from ssl4eo_jax.interop.runs import restore_run, run_manifest
from ssl4eo_jax.interop.state_dict import (
    RESNET,
    VIT,
    Anchor,
    InteropError,
    backbone_prefix,
    flat_arrays,
    read_file,
    summarise_keys,
    to_numpy,
)
from ssl4eo_jax.interop.vit_weights import detect_vit, resample_variables, state_dict_to_vit
from ssl4eo_jax.methods.base import build_encoder
from ssl4eo_jax.models.resnet import ResNet
from ssl4eo_jax.models.vit import ViT

# Heads stored beside the backbone; none is part of the encoder.
HEAD_GROUPS = ("fc", "projector", "projection_head", "prediction_head", "predictor", "head", "heads")
# ... and beside a ViT: MAE's decoder and mask token (fc_norm: see load_torch_vit).
VIT_HEAD_GROUPS = HEAD_GROUPS + ("fc_norm", "mask_token", "decoder_embed", "decoder_pos_embed", "decoder_blocks",
                                 "decoder_norm", "decoder_pred")
SIDECAR_MARK = "ssl4eo_jax_export"


@dataclasses.dataclass
class TorchResNet:
    """A converted PyTorch ResNet.

    Attributes:
      model_cfg: the ``config.model`` section that builds the encoder (name, stem, width, ...).
      num_bands: input bands of conv1.
      variables: encoder ``{"params", "batch_stats"}`` as float32 numpy arrays.
      fc: a plain ``fc`` Linear classifier as ``{"kernel": (D, K), "bias": (K,)}``, else None.
      prefix: the prefix the backbone had in the file, e.g. ``module.encoder_q.``.
      notes: what was ignored or adapted on the way.
    """

    model_cfg: dict[str, Any]
    num_bands: int
    variables: dict[str, Any]
    fc: dict[str, np.ndarray] | None
    prefix: str
    notes: list[str]

    def encoder(self) -> ResNet:
        return build_encoder(ml_collections.ConfigDict(self.model_cfg))


def _split_heads(heads: dict[str, np.ndarray], notes: list[str], classifier: str = "fc"
                 ) -> dict[str, np.ndarray] | None:
    """The plain Linear ``classifier`` (``fc``, timm ViT's ``head``), if any; every other head is
    dropped with a note."""
    fc, name = None, classifier
    fc_keys = {k for k in heads if k.startswith(f"{name}.")}
    if fc_keys and fc_keys <= {f"{name}.weight", f"{name}.bias"} and np.ndim(heads.get(f"{name}.weight")) == 2:
        weight = heads.pop(f"{name}.weight")
        bias = heads.pop(f"{name}.bias", np.zeros(weight.shape[0], weight.dtype))
        fc = {"kernel": np.ascontiguousarray(weight.T, np.float32), "bias": np.asarray(bias, np.float32)}
        notes.append(f"{name} (Linear {weight.shape[1]} -> {weight.shape[0]}) is not part of the encoder; "
                     f"kept as .{name}")
    if heads:
        notes.append(f"dropped {len(heads)} projection/classification head keys: {summarise_keys(heads, depth=1)}")
    return fc


def _fold_conv1_bias(backbone: dict[str, np.ndarray], notes: list[str]) -> None:
    """conv1 with a bias (the So2Sat reference stem) == no bias and bn1.running_mean - bias, since BN follows."""
    bias = backbone.pop("conv1.bias", None)
    if bias is not None and "bn1.running_mean" in backbone:
        backbone["bn1.running_mean"] = (backbone["bn1.running_mean"] - bias).astype(np.float32)
        notes.append("folded conv1.bias into bn1.running_mean (exact: BatchNorm follows conv1)")


def _read(source: str | os.PathLike | Mapping[str, Any], weights_only: bool) -> Mapping[str, Any]:
    return read_file(os.fspath(source), weights_only) if isinstance(source, (str, os.PathLike)) else source


def _backbone(obj: Mapping[str, Any], anchor: Anchor, prefix: str | None, key: str | None
              ) -> tuple[dict[str, np.ndarray], str, list[str]]:
    """The prefix-free numpy state_dict under the backbone's prefix (heads included), the prefix, and notes."""
    flat, notes = flat_arrays(obj, key, (anchor,))
    prefix, more = backbone_prefix(list(flat), prefix, anchor)
    notes += more
    outside = [k for k in flat if not k.startswith(prefix)]
    if outside:
        notes.append(f"ignored {len(outside)} keys outside the backbone prefix {prefix!r}: {summarise_keys(outside)}")
    return {k[len(prefix):]: to_numpy(v) for k, v in flat.items() if k.startswith(prefix)}, prefix, notes


def load_torch_resnet(source: str | os.PathLike | Mapping[str, Any], *, prefix: str | None = None,
                      key: str | None = None, weights_only: bool = True) -> TorchResNet:
    """Converts a torchvision / timm / torchgeo ResNet-18/34/50 state_dict (any band count) into
    our encoder variables.

    Args:
      source: a ``.pth``/``.pt``/``.safetensors`` path, or a loaded (possibly nested) state_dict.
      prefix: the backbone's key prefix; found automatically (``module.encoder_q.``, ``backbone.``,
        ...; MoCo's ``encoder_k`` and EMA/target copies are skipped).
      key: the nested dict to use (e.g. ``"student"``); by default ``state_dict``, ``model``,
        ``teacher``, ``student``, ... are descended in that order.
      weights_only: torch.load's safe mode; False only for trusted files that pickle other objects.
    Raises:
      InteropError: listing unexpected, missing and mis-shaped keys when the weights do not fit.
    """
    obj = _read(source, weights_only)
    inside, prefix, notes = _backbone(obj, RESNET, prefix, key)
    backbone = {k: v for k, v in inside.items() if k.split(".")[0] not in HEAD_GROUPS}
    fc = _split_heads({k: v for k, v in inside.items() if k not in backbone}, notes)
    model_cfg, num_bands = detect_architecture(backbone)
    _fold_conv1_bias(backbone, notes)
    variables = state_dict_to_encoder(backbone, model_cfg, num_bands)
    for note in notes:
        logging.info("load_torch_resnet: %s", note)
    return TorchResNet(model_cfg, num_bands, variables, fc, prefix, notes)


@dataclasses.dataclass
class TorchViT:
    """A converted timm ViT.

    Attributes:
      model_cfg: the ``config.model`` section that builds the encoder (name, patch_size, depth, img_size, ...).
      num_bands: input bands of the patch projection.
      variables: encoder ``{"params", "batch_stats": {}}`` as float32 numpy arrays.
      head: a plain ``head`` Linear classifier as ``{"kernel": (D, K), "bias": (K,)}``, else None.
      prefix: the prefix the backbone had in the file, e.g. ``module.base_encoder.``.
      grid: the checkpoint's own patch grid (its ``pos_embed``), before any resampling.
      notes: what was ignored or adapted on the way.
    """

    model_cfg: dict[str, Any]
    num_bands: int
    variables: dict[str, Any]
    head: dict[str, np.ndarray] | None
    prefix: str
    grid: int
    notes: list[str]

    def encoder(self) -> ViT:
        return build_encoder(ml_collections.ConfigDict(self.model_cfg))


def _vit(obj: Mapping[str, Any], where: str, *, prefix: str | None = None, key: str | None = None,
         img_size: int | None = None, heads: int | None = None, pool: str = "token") -> TorchViT:
    inside, prefix, notes = _backbone(obj, VIT, prefix, key)
    backbone = {k: v for k, v in inside.items() if k.split(".")[0] not in VIT_HEAD_GROUPS}
    if "fc_norm.weight" in inside and "norm.weight" not in backbone:
        raise InteropError(f"{where}: the ViT has 'fc_norm.weight' and no 'norm.weight' (timm's global_pool='avg' "
                           "norm after pooling), which ssl4eo-jax's ViT (norm, then pooling) cannot represent.")
    head = _split_heads({k: v for k, v in inside.items() if k not in backbone}, notes, classifier="head")
    model_cfg, num_bands = detect_vit(backbone, heads, pool, where)
    variables = state_dict_to_vit(backbone, model_cfg, num_bands, where)
    grid = model_cfg["img_size"] // model_cfg["patch_size"]
    if img_size is not None and img_size != model_cfg["img_size"]:
        notes.append(f"resampled pos_embed from {grid}x{grid} to {img_size // model_cfg['patch_size']}x"
                     f"{img_size // model_cfg['patch_size']} patches (cubic, Keys a=-0.5; timm uses a=-0.75)")
        variables, model_cfg = resample_variables(variables, model_cfg, img_size)
    for note in notes:
        logging.info("load_torch_vit: %s", note)
    return TorchViT(model_cfg, num_bands, variables, head, prefix, grid, notes)


def load_torch_vit(source: str | os.PathLike | Mapping[str, Any], *, prefix: str | None = None,
                   key: str | None = None, img_size: int | None = None, heads: int | None = None,
                   pool: str = "token", weights_only: bool = True) -> TorchViT:
    """Converts a timm / torchgeo ``VisionTransformer`` state_dict (the SSL4EO-S12 ViT-S/16 layout,
    any band count) into our ViT encoder variables.

    Args:
      source: a ``.pth``/``.pt``/``.safetensors`` path, or a loaded (possibly nested) state_dict.
      prefix, key, weights_only: as ``load_torch_resnet`` (``module.``, ``backbone.``, ``encoder.``,
        ``module.base_encoder.``, ...; ``state_dict``/``model``/``teacher`` nesting).
      img_size: the input size to build for; ``pos_embed`` is resampled when its grid differs
        (``vit_weights`` explains how). Default: the checkpoint's own grid times the patch size.
      heads: the attention head count, which timm state_dicts do not store (default: the size's).
      pool: "token" (class token, timm's default) or "mean" (mean of the normed patch tokens).
    Raises:
      InteropError: one line naming the file and the missing, unexpected or mis-shaped keys.
    """
    where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the state_dict"
    return _vit(_read(source, weights_only), where, prefix=prefix, key=key, img_size=img_size, heads=heads, pool=pool)


def load_torch_weights(source: str | os.PathLike | Mapping[str, Any], *, key: str | None = None,
                       weights_only: bool = True, **kwargs: Any) -> TorchResNet | TorchViT:
    """A ResNet (``load_torch_resnet``) or a ViT (``load_torch_vit``) state_dict, told apart by its keys
    (``patch_embed.proj.weight``: a ViT); ``kwargs`` go to that loader."""
    obj = _read(source, weights_only)
    flat, _ = flat_arrays(obj, key, (RESNET, VIT))
    if not any(k.endswith(VIT.stem) for k in flat):
        return load_torch_resnet(obj, key=key, **kwargs)
    where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the state_dict"
    return _vit(obj, where, key=key, **kwargs)


def sidecar_path(weights_path: str) -> str:
    """``model.safetensors`` -> ``model.json``: where the export writes its description."""
    return os.path.splitext(weights_path)[0] + ".json"


def read_sidecar(weights_path: str) -> dict[str, Any] | None:
    """The export sidecar beside a weights file, if there is one."""
    path = sidecar_path(weights_path)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return data if isinstance(data, dict) and SIDECAR_MARK in data else None


def check_bands(expected: int | Sequence[str] | None, num_bands: int, bands: Sequence[str] | None, what: str) -> None:
    """Raises when the weights' input bands differ from the evaluation data's."""
    if expected is None:
        return
    count = expected if isinstance(expected, int) else len(expected)
    if count != num_bands:
        raise ConfigError(f"{what} takes {num_bands} bands {list(bands) if bands else ''}, but the data has {count} "
                          f"{'' if isinstance(expected, int) else list(expected)}.")
    if bands is not None and not isinstance(expected, int) and \
            [norm.canonical_band(b) for b in expected] != [norm.canonical_band(b) for b in bands]:
        raise ConfigError(f"{what} expects the bands {list(bands)} in this order, but the data has {list(expected)}.")


@dataclasses.dataclass
class LoadedEncoder:
    """An evaluator's encoder: ``config.model`` dict, variables, input normalisation, and its input
    band names in order (None when neither the run nor the file says)."""

    model_cfg: dict[str, Any]
    variables: dict[str, Any]
    normalisation: norm.Normalisation
    bands: tuple[str, ...] | None
    num_bands: int


def load_encoder(path: str, expected_bands: int | Sequence[str] | None = None,
                 normalisation: str | dict[str, Any] | None = None, **torch_kwargs: Any) -> LoadedEncoder:
    """The encoder of an evaluator's ``--config.checkpoint``: one of our run directories (workdir,
    ``checkpoints/`` or a step), or a PyTorch weights file (a ResNet or a ViT, ``load_torch_weights``).

    Normalisation, unless given: for our runs the evaluation dataset's own statistics, as in
    pre-training (preset ``dataset``); for a file, its export sidecar's, else ``ssl4eo_s12``
    (divide by 10000, what SSL4EO-S12 and torchgeo Sentinel-2 weights expect). Bands: the run's
    dataset manifest, the file's sidecar, or the SSL4EO-S12 band order for those weights.
    """
    if os.path.isdir(path):
        run = restore_run(path)
        manifest = run_manifest(run)
        model_cfg, variables, num_bands = dict(run.config["model"]), run.encoder(), run.num_bands
        bands = manifest.bands if manifest is not None else None
        spec = normalisation or "dataset"
    else:
        weights = load_torch_weights(path, **torch_kwargs)
        sidecar = read_sidecar(path) or {}
        model_cfg, variables, num_bands = weights.model_cfg, weights.variables, weights.num_bands
        spec = normalisation or sidecar.get("normalisation")
        if spec is None:
            spec = "ssl4eo_s12"
            logging.warning("No normalisation given for %s: assuming SSL4EO-S12 weights (inputs / 10000).", path)
        bands = sidecar.get("bands")
        if bands is None and isinstance(spec, str) and spec.startswith("ssl4eo_s1"):
            bands = norm.SSL4EO_S12_BANDS.get(num_bands)
    check_bands(expected_bands, num_bands, bands, f"The encoder in {path}")
    return LoadedEncoder(model_cfg, variables, norm.from_spec(spec, num_bands),
                         tuple(bands) if bands is not None else None, num_bands)


def load_encoder_variables(path: str, expected_bands: int | Sequence[str] | None = None,
                           normalisation: str | dict[str, Any] | None = None, **torch_kwargs: Any
                           ) -> tuple[dict[str, Any], dict[str, Any], norm.Normalisation]:
    """``(config.model dict, encoder variables, input normalisation)`` of ``load_encoder``."""
    loaded = load_encoder(path, expected_bands, normalisation, **torch_kwargs)
    return loaded.model_cfg, loaded.variables, loaded.normalisation
