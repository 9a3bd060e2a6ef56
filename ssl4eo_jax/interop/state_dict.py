"""PyTorch state_dicts as flat ``{name: numpy array}`` dicts: reading and writing ``.pth``/``.pt``
(needs torch) and ``.safetensors`` (numpy only), unwrapping the nested dicts of training checkpoints,
and finding a backbone's prefix in them (a ResNet or a ViT, by its ``Anchor`` keys)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ssl4eo_jax.errors import UserError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# Nested dicts of training checkpoints, in order of preference (DINO: the teacher is evaluated).
NESTED_KEYS = ("state_dict", "model", "teacher", "student", "model_state", "network", "net")
# Backbones that are not the one to evaluate: MoCo's key encoder, momentum/EMA/target copies.
IGNORED_BACKBONES = ("encoder_k", "momentum", "target", "ema")


@dataclasses.dataclass(frozen=True)
class Anchor:
    """How a backbone shows in a state_dict: its ``stem`` key, and a ``companion`` key that sits
    under the same prefix (telling the backbone from a lone layer of the same name)."""

    what: str
    stem: str
    companion: str


RESNET = Anchor("ResNet", "conv1.weight", "layer1.0.conv1.weight")
VIT = Anchor("ViT", "patch_embed.proj.weight", "pos_embed")


class InteropError(UserError):
    """Weights that cannot be converted; the message names the keys or file at fault."""


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise InteropError(f"{extra} needs the {module.split('.')[0]!r} package: "
                           f"pip install 'ssl4eo-jax[interop]' (and torch for .pth files).") from e


def to_numpy(value: Any) -> np.ndarray:
    """A numpy copy of a torch tensor or array; float16/bfloat16 are widened to float32 exactly."""
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu()
        if value.is_floating_point() and value.element_size() < 4:
            value = value.float()
        return value.numpy().copy()
    return np.array(value)


def _is_array(value: Any) -> bool:
    """numpy arrays and torch tensors (anything with a shape and a dtype)."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


def read_file(path: str, weights_only: bool = True) -> Mapping[str, Any]:
    """The object stored in a ``.safetensors`` or torch file (tensors stay as they are)."""
    if not os.path.isfile(path):
        raise InteropError(f"Weights file {path} does not exist.")
    if path.endswith(".safetensors"):
        return _require("safetensors.numpy", f"Reading {path}").load_file(path)
    torch = _require("torch", f"Reading {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError and others
        if weights_only:
            raise InteropError(
                f"torch.load(weights_only=True) refused {path} ({type(e).__name__}: {str(e).splitlines()[0]}). "
                "Checkpoints that pickle other objects (e.g. DINO's argparse args) need weights_only=False: "
                "pass it only for files you trust."
            ) from e
        raise InteropError(f"Could not read {path} with torch.load: {e}") from e


def flat_arrays(obj: Mapping[str, Any], key: str | None = None, anchors: tuple[Anchor, ...] = (RESNET,)
                ) -> tuple[dict[str, Any], list[str]]:
    """The flat dict of tensors holding the weights (of one of ``anchors``' backbones), descending
    into ``key`` or the usual nested dicts (``state_dict``, ``model``, ``teacher``, ...); returns it
    and notes on what was chosen."""
    notes = []
    if key is not None:
        if not isinstance(obj.get(key), Mapping):
            raise InteropError(f"The checkpoint has no nested dict {key!r}; its keys: {summarise_keys(obj)}.")
        obj, notes = obj[key], [f"using the nested {key!r} dict"]
    stems = tuple(a.stem for a in anchors)
    while not any(str(k).endswith(stems) and _is_array(v) for k, v in obj.items()):
        nested = [k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)]
        if not nested:
            what = " or ".join(a.what for a in anchors)
            raise InteropError(f"No {what} weights ({' or '.join(repr('...' + s) for s in stems)}) found; "
                               f"the checkpoint's keys: {summarise_keys(obj)}.")
        others = f" (also has {nested[1:]}; choose with key=...)" if len(nested) > 1 else ""
        notes.append(f"using the nested {nested[0]!r} dict{others}")
        obj = obj[nested[0]]
    return {str(k): v for k, v in obj.items() if _is_array(v)}, notes


def _ignored(prefix: str) -> bool:
    """A prefix with a component like ``encoder_k``, ``momentum_encoder``, ``target_net`` or ``ema``."""
    def matches(part: str, word: str) -> bool:
        if len(word) > 3:
            return word in part
        return word == part or part.startswith(word + "_") or part.endswith("_" + word)

    return any(matches(part, word) for part in prefix.split(".") for word in IGNORED_BACKBONES)


def backbone_prefix(keys: list[str], prefix: str | None = None, anchor: Anchor = RESNET) -> tuple[str, list[str]]:
    """The prefix before the stem (``conv1.weight``, ``patch_embed.proj.weight``) of the backbone in
    ``keys`` (e.g. ``module.encoder_q.``)."""
    names, stem, what = set(keys), anchor.stem, anchor.what
    found = sorted({k[: -len(stem)] for k in names
                    if k.endswith(stem) and k[: -len(stem)] + anchor.companion in names})
    if prefix is not None:
        if prefix not in found:
            raise InteropError(f"No {what} under prefix {prefix!r}; {what}s found under {found}.")
        return prefix, []
    used = [p for p in found if not _ignored(p)]
    lone = sorted(k[: -len(stem)] for k in names if k.endswith(stem) and not _ignored(k[: -len(stem)]))
    if not found and lone:
        raise InteropError(f"The {what} weights have {lone[0] + stem!r} but no {lone[0] + anchor.companion!r}: "
                           "the state_dict is truncated or not a whole backbone; save every key of the model.")
    if len(used) != 1:
        raise InteropError(
            f"Found {len(used)} candidate {what}s under prefixes {used or found} (ignoring {IGNORED_BACKBONES}); "
            "choose one with prefix=...")
    skipped = [p for p in found if p not in used]
    notes = [f"ignored the backbone(s) under {skipped}"] if skipped else []
    return used[0], notes


def summarise_keys(keys: Any, limit: int = 8, depth: int = 2) -> str:
    """``a.b.* (12), c`` for a few groups of keys (by their first ``depth`` dotted components)."""
    groups: dict[str, int] = {}
    for k in keys:
        parts = str(k).split(".")
        group = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        groups[group] = groups.get(group, 0) + 1
    items = [f"{g} ({n})" if n > 1 else g for g, n in list(groups.items())[:limit]]
    return ", ".join(items) + (f", ... ({len(groups) - limit} more groups)" if len(groups) > limit else "")


def write_file(path: str, state_dict: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes a state_dict as ``.safetensors`` (numpy only) or ``.pth``/``.pt`` (torch.save)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        st = _require("safetensors.numpy", f"Writing {path}")
        st.save_file(arrays, path, metadata={"format": "pt", **(metadata or {})})
    elif path.endswith(TORCH_SUFFIXES):
        torch = _require("torch", f"Writing {path}")
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    else:
        raise InteropError(f"Unknown weights format for {path}; use .safetensors, .pth or .pt.")
