"""Flax variables <-> PyTorch state_dict entries, by one rule per kind of leaf.

Parameter names map mechanically: a Flax module path becomes dotted torch module names (through a
per-network ``module_name`` function) and the leaf becomes torch's (``kernel``/``scale`` ->
``weight``, ``bias`` -> ``bias``, ``batch_stats`` ``mean``/``var`` -> ``running_mean``/``running_var``;
a ViT's ``cls_token`` and ``pos_embed`` keep their names).
Conv kernels are HWIO in Flax and OIHW in torch; Dense kernels (in, out) and Linear weights
(out, in). Every transform is a transpose, so conversions in both directions are bit-exact.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
from flax import traverse_util

from ssl4eo_jax.interop.state_dict import InteropError

ModuleName = Callable[[str], str]
LEAVES = {
    ("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var",
    # a ViT's own parameters (not in a submodule), named alike in both
    ("params", "cls_token"): "cls_token", ("params", "pos_embed"): "pos_embed",
}
BN_COUNTER = "num_batches_tracked"


def resnet_module_name(name: str) -> str:
    """``layer2_0`` -> ``layer2.0``; ``downsample_conv``/``downsample_bn`` -> ``downsample.0``/``.1``."""
    name = re.sub(r"^layer(\d+)_(\d+)$", r"layer\1.\2", name)
    return {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(name, name)


def mlp_module_name(hidden_norm: bool) -> ModuleName:
    """Our MLP's ``linear{i}``/``bn{i}`` -> the ``nn.Sequential`` indices of ``Sequential(Linear,
    [BatchNorm1d,] ReLU, ..., Linear[, BatchNorm1d])``: ``3i``/``3i+1`` with hidden BatchNorm (Barlow
    Twins' projector), ``2i``/``2i+1`` without."""
    stride = 3 if hidden_norm else 2

    def name(module: str) -> str:
        match = re.fullmatch(r"(linear|bn)(\d+)", module)
        if not match:
            raise InteropError(f"Unexpected projector module {module!r}.")
        return str(stride * int(match[2]) + (match[1] == "bn"))

    return name


def torch_key(path: tuple[str, ...], module_name: ModuleName) -> str:
    """The torch state_dict key of one Flax leaf ``(collection, *modules, leaf)``."""
    collection, *modules, leaf = path
    return ".".join([*(module_name(m) for m in modules), LEAVES[(collection, leaf)]])


def to_torch_array(leaf: str, value: Any) -> np.ndarray:
    value = np.asarray(value)
    if leaf == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


def from_torch_array(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def variables_to_state_dict(variables: dict[str, Any], module_name: ModuleName, prefix: str = ""
                            ) -> dict[str, np.ndarray]:
    """The torch state_dict of Flax ``{"params", "batch_stats"}``, with BatchNorm's
    ``num_batches_tracked`` (0: not tracked here; torch only reads it when momentum is None)."""
    out = {}
    for path, value in traverse_util.flatten_dict(dict(variables)).items():
        out[prefix + torch_key(path, module_name)] = np.ascontiguousarray(to_torch_array(path[-1], value))
        if path[0] == "batch_stats" and path[-1] == "mean":
            out[prefix + torch_key(path, module_name).rsplit(".", 1)[0] + "." + BN_COUNTER] = np.zeros((), np.int64)
    return out


def state_dict_to_variables(state_dict: dict[str, np.ndarray], like: dict[str, Any], module_name: ModuleName,
                            what: str) -> dict[str, Any]:
    """Flax variables shaped like ``like`` (arrays or ShapeDtypeStructs) from a torch state_dict
    without prefix; every key must match. ``what`` names the target network in errors."""
    expected = {torch_key(path, module_name): path for path in traverse_util.flatten_dict(dict(like))}
    shapes = {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(dict(like)).items()}
    given = {k for k in state_dict if not k.endswith("." + BN_COUNTER)}
    unexpected = sorted(given - set(expected))
    missing = sorted(set(expected) - given)
    flat, mismatched = {}, []
    for key in sorted(given & set(expected)):
        path = expected[key]
        value = from_torch_array(path[-1], np.asarray(state_dict[key]))
        if value.shape != shapes[path]:
            want = to_torch_array(path[-1], np.empty(shapes[path], np.uint8)).shape
            mismatched.append(f"{key}: {tuple(np.shape(state_dict[key]))} in the file, {want} expected")
        flat[path] = np.ascontiguousarray(value, dtype=np.float32)
    if unexpected or missing or mismatched:
        lines = [f"Cannot convert the weights to {what}:"]
        for title, items in (("unexpected keys", unexpected), ("missing keys", missing),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise InteropError("\n".join(lines))
    return traverse_util.unflatten_dict(flat)
