"""The encoders: torchvision-layout ResNets (``resnet.py``) and timm-layout ViTs (``vit.py``)."""

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.models.resnet import STAGE_SIZES
from ssl4eo_jax.models.vit import VIT_SIZES

RESNETS = tuple(STAGE_SIZES)
VITS = tuple(VIT_SIZES)
MODELS = RESNETS + VITS


def check_model(name: str, what: str = "config.model.name") -> str:
    """``name`` if it is an encoder's, else one line naming ``what`` and every encoder."""
    if name not in MODELS:
        raise ConfigError(f"Unknown model {name!r} ({what}); choose one of {', '.join(MODELS)}.")
    return name
