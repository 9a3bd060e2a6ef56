"""Our own training runs: the latest orbax checkpoint of a work directory, restored to host numpy
arrays without building the model or the mesh, with its config and dataset manifest."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ssl4eo_jax.data.manifest import MANIFEST_NAME, Manifest, load_manifest
from ssl4eo_jax.interop.state_dict import InteropError
from ssl4eo_jax.methods.base import evaluated_encoder


@dataclasses.dataclass
class RunCheckpoint:
    """One restored checkpoint: ``state`` holds ``step``, ``params``, ``batch_stats``, ``opt``, ``extra``."""

    step_dir: str
    step: int
    workdir: str | None
    config: dict[str, Any]
    state: dict[str, Any]

    def encoder(self) -> dict[str, Any]:
        """The encoder's ``{"params", "batch_stats"}``: the network the method's official code
        evaluates and publishes (DINO's teacher, every other method's online encoder)."""
        return evaluated_encoder(self.state, str(self.config.get("method", "")))

    @property
    def num_bands(self) -> int:
        """Input bands of the encoder's stem: a ResNet's ``conv1``, a ViT's ``patch_embed``."""
        encoder = self.state["params"]["encoder"]
        return int(encoder["conv1" if "conv1" in encoder else "patch_embed"]["kernel"].shape[2])


def find_step_dir(path: str) -> str:
    """The step directory of ``path``: itself, or the latest step of a workdir or its ``checkpoints``."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "state")):
        return path
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    steps = [int(n) for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n, "state"))] \
        if os.path.isdir(root) else []
    if not steps:
        raise InteropError(f"No checkpoint under {path}: expected a run's work directory, its checkpoints/ "
                           "directory or one <step>/ directory with a 'state' item.")
    return os.path.join(root, str(max(steps)))


def restore_run(path: str) -> RunCheckpoint:
    """The latest checkpoint under ``path`` (see ``find_step_dir``), as numpy arrays."""
    step_dir = find_step_dir(path)
    handler = ocp.PyTreeCheckpointHandler()
    try:
        state_dir = epath.Path(step_dir) / "state"
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), handler.metadata(state_dir).tree)
        state = handler.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    finally:
        handler.close()
    config = ocp.JsonCheckpointHandler().restore(epath.Path(step_dir) / "config")
    parent = os.path.dirname(step_dir)
    workdir = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else None
    return RunCheckpoint(step_dir, int(os.path.basename(step_dir)), workdir, dict(config), state)


def run_manifest(run: RunCheckpoint) -> Manifest | None:
    """The manifest of the run's dataset where it can be found without generating data:
    ``config.data.dir``, or the ``data_dir`` that ``results.json`` records."""
    candidates = [run.config.get("data", {}).get("dir")]
    results = os.path.join(run.workdir, "results.json") if run.workdir else ""
    if os.path.isfile(results):
        with open(results) as f:
            candidates.append(json.load(f).get("data_dir"))
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, MANIFEST_NAME)):
            return load_manifest(root)
    return None
