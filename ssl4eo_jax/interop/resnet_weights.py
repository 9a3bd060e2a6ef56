"""torchvision / timm / torchgeo ResNet state_dicts <-> our ``models.resnet`` variables.

timm's ``resnet18``/``resnet50`` use torchvision's parameter names (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``downsample.0``/``downsample.1``, ``fc``), and torchgeo's weights are
timm state_dicts, so one layout serves all three. The architecture (ResNet-18/34/50), the width,
the band count and the stem (7x7 ImageNet or 3x3 "small") are read from the weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl4eo_jax.interop.layout import resnet_module_name, state_dict_to_variables, variables_to_state_dict
from ssl4eo_jax.interop.state_dict import InteropError
from ssl4eo_jax.methods.base import build_encoder
from ssl4eo_jax.models.resnet import STAGE_SIZES

STEMS = {7: "imagenet", 3: "small"}


def model_config(name: str, stem: str, width: int) -> dict[str, Any]:
    """A ``config.model`` section for an encoder read from weights."""
    return {"name": name, "stem": stem, "width": width, "zero_init_residual": False, "dtype": "auto"}


def detect_architecture(state_dict: dict[str, np.ndarray]) -> tuple[dict[str, Any], int]:
    """``config.model`` and the number of input bands of a torchvision-layout ResNet state_dict."""
    if "conv1.weight" not in state_dict:
        raise InteropError("The weights have no 'conv1.weight'; is this a torchvision-layout ResNet?")
    width, bands, kh, kw = np.shape(state_dict["conv1.weight"])
    if kh != kw or kh not in STEMS:
        raise InteropError(f"conv1 has a {kh}x{kw} kernel; ssl4eo-jax ResNets have a 7x7 (imagenet) "
                           "or 3x3 (small) stem.")
    bottleneck = "layer1.0.conv3.weight" in state_dict
    stages = tuple(len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    names = [n for n, sizes in STAGE_SIZES.items() if sizes == stages and (n == "resnet50") == bottleneck]
    if not names:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise InteropError(f"Unsupported ResNet: {kind} stages {stages}; ssl4eo-jax has {sorted(STAGE_SIZES)}.")
    return model_config(names[0], STEMS[kh], int(width)), int(bands)


def abstract_encoder(model_cfg: dict[str, Any], num_bands: int) -> dict[str, Any]:
    """Shapes of the encoder's ``{"params", "batch_stats"}`` (traced, nothing computed)."""
    encoder = build_encoder(ml_collections.ConfigDict(model_cfg))
    return jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros((1, 32, 32, num_bands)), train=False))


def describe(model_cfg: dict[str, Any], num_bands: int) -> str:
    return f"ssl4eo-jax {model_cfg['name']} ({num_bands} bands, {model_cfg['stem']} stem, width {model_cfg['width']})"


def state_dict_to_encoder(state_dict: dict[str, np.ndarray], model_cfg: dict[str, Any], num_bands: int
                          ) -> dict[str, Any]:
    """Encoder variables from a prefix-free backbone state_dict (no ``fc``); every key must match."""
    like = abstract_encoder(model_cfg, num_bands)
    return state_dict_to_variables(state_dict, like, resnet_module_name, describe(model_cfg, num_bands))


def encoder_to_state_dict(variables: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """The torchvision/timm state_dict (without ``fc``) of encoder ``{"params", "batch_stats"}``."""
    return variables_to_state_dict(variables, resnet_module_name, prefix)
