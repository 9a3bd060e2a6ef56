"""Our ``models.heads.MLP`` projectors <-> ``torch.nn.Sequential`` state_dicts."""

from __future__ import annotations

from typing import Any

import numpy as np

from ssl4eo_jax.interop.layout import ModuleName, mlp_module_name, state_dict_to_variables, variables_to_state_dict


def _layers(variables: dict[str, Any]) -> tuple[int, bool]:
    """Number of Linear layers, and whether the hidden ones are followed by BatchNorm."""
    modules = set(variables.get("params", {})) | set(variables.get("batch_stats", {}))
    n = len([m for m in modules if m.startswith("linear")])
    return n, n > 1 and "bn0" in modules


def module_names(variables: dict[str, Any]) -> ModuleName:
    return mlp_module_name(_layers(variables)[1])


def projector_to_state_dict(variables: dict[str, Any], prefix: str = "projector.") -> dict[str, np.ndarray]:
    """The ``nn.Sequential`` state_dict of MLP ``{"params", "batch_stats"}``, keys under ``prefix``."""
    return variables_to_state_dict(variables, module_names(variables), prefix)


def state_dict_to_projector(state_dict: dict[str, np.ndarray], like: dict[str, Any]) -> dict[str, Any]:
    """MLP variables shaped like ``like`` from a prefix-free ``nn.Sequential`` state_dict."""
    return state_dict_to_variables(state_dict, like, module_names(like), "the projector MLP")


def torch_code(variables: dict[str, Any]) -> str:
    """The ``torch.nn.Sequential`` expression whose state_dict ``projector_to_state_dict`` writes."""
    params, stats = variables.get("params", {}), variables.get("batch_stats", {})
    n = _layers(variables)[0]
    layers = []
    for i in range(n):
        fan_in, fan_out = np.shape(params[f"linear{i}"]["kernel"])
        layers.append(f"torch.nn.Linear({fan_in}, {fan_out}, bias={'bias' in params[f'linear{i}']})")
        if f"bn{i}" in stats:
            layers.append(f"torch.nn.BatchNorm1d({fan_out}, affine={f'bn{i}' in params})")
        if i < n - 1:
            layers.append("torch.nn.ReLU()")
    return "torch.nn.Sequential(" + ", ".join(layers) + ")"
