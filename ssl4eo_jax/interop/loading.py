"""Loading encoders for evaluation: PyTorch ResNet weights (``load_torch_resnet``) and, through one
entry point for both, our own run directories (``load_encoder_variables``)."""

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
from ssl4eo_jax.interop.state_dict import backbone_prefix, flat_arrays, read_file, summarise_keys, to_numpy
from ssl4eo_jax.methods.base import build_encoder
from ssl4eo_jax.models.resnet import ResNet

# Heads stored beside the backbone; none is part of the encoder.
HEAD_GROUPS = ("fc", "projector", "projection_head", "prediction_head", "predictor", "head", "heads")
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


def _split_heads(heads: dict[str, np.ndarray], notes: list[str]) -> dict[str, np.ndarray] | None:
    """The plain ``fc`` classifier, if any; every other head is dropped with a note."""
    fc = None
    fc_keys = {k for k in heads if k.startswith("fc.")}
    if fc_keys and fc_keys <= {"fc.weight", "fc.bias"} and np.ndim(heads.get("fc.weight")) == 2:
        weight = heads.pop("fc.weight")
        bias = heads.pop("fc.bias", np.zeros(weight.shape[0], weight.dtype))
        fc = {"kernel": np.ascontiguousarray(weight.T, np.float32), "bias": np.asarray(bias, np.float32)}
        notes.append(f"fc (Linear {weight.shape[1]} -> {weight.shape[0]}) is not part of the encoder; kept as .fc")
    if heads:
        notes.append(f"dropped {len(heads)} projection/classification head keys: {summarise_keys(heads, depth=1)}")
    return fc


def _fold_conv1_bias(backbone: dict[str, np.ndarray], notes: list[str]) -> None:
    """conv1 with a bias (the So2Sat reference stem) == no bias and bn1.running_mean - bias, since BN follows."""
    bias = backbone.pop("conv1.bias", None)
    if bias is not None and "bn1.running_mean" in backbone:
        backbone["bn1.running_mean"] = (backbone["bn1.running_mean"] - bias).astype(np.float32)
        notes.append("folded conv1.bias into bn1.running_mean (exact: BatchNorm follows conv1)")


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
    obj = read_file(os.fspath(source), weights_only) if isinstance(source, (str, os.PathLike)) else source
    flat, notes = flat_arrays(obj, key)
    prefix, more = backbone_prefix(list(flat), prefix)
    notes += more
    outside = [k for k in flat if not k.startswith(prefix)]
    if outside:
        notes.append(f"ignored {len(outside)} keys outside the backbone prefix {prefix!r}: {summarise_keys(outside)}")
    inside = {k[len(prefix):]: to_numpy(v) for k, v in flat.items() if k.startswith(prefix)}
    backbone = {k: v for k, v in inside.items() if k.split(".")[0] not in HEAD_GROUPS}
    fc = _split_heads({k: v for k, v in inside.items() if k not in backbone}, notes)
    model_cfg, num_bands = detect_architecture(backbone)
    _fold_conv1_bias(backbone, notes)
    variables = state_dict_to_encoder(backbone, model_cfg, num_bands)
    for note in notes:
        logging.info("load_torch_resnet: %s", note)
    return TorchResNet(model_cfg, num_bands, variables, fc, prefix, notes)


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
    ``checkpoints/`` or a step), or a PyTorch weights file.

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
        weights = load_torch_resnet(path, **torch_kwargs)
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
