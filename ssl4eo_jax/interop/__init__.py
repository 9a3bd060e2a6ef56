"""Interoperability with the PyTorch ecosystem (torchvision, timm, torchgeo, SSL4EO-S12).

* ``load_torch_resnet(path_or_state_dict)``: a torchvision/timm/torchgeo ResNet-18/34/50 state_dict
  (any band count; ``.pth``, ``.pt`` or ``.safetensors``; nested and prefixed checkpoints) -> our
  encoder variables.
* ``load_torch_vit(path_or_state_dict)``: a timm/torchgeo VisionTransformer state_dict (the
  SSL4EO-S12 ViT-S/16 layout, any band count; ``pos_embed`` resampled to another ``img_size``).
* ``load_encoder_variables(path)``: what an evaluator's ``--config.checkpoint`` resolves to, for a
  PyTorch file (ResNet or ViT, told apart by its keys) or one of our runs:
  ``(config.model, variables, normalisation)``.
* ``encoder_to_state_dict`` / ``vit_encoder_to_state_dict`` / ``projector_to_state_dict``: the
  reverse, used by ``ssl4eo_jax.export``.
"""

from ssl4eo_jax.interop.loading import (
    LoadedEncoder,
    TorchResNet,
    TorchViT,
    load_encoder,
    load_encoder_variables,
    load_torch_resnet,
    load_torch_vit,
    load_torch_weights,
    read_sidecar,
)
from ssl4eo_jax.interop.normalisation import PRESETS, Normalisation
from ssl4eo_jax.interop.projector import projector_to_state_dict, state_dict_to_projector
from ssl4eo_jax.interop.resnet_weights import encoder_to_state_dict, state_dict_to_encoder
from ssl4eo_jax.interop.runs import RunCheckpoint, restore_run
from ssl4eo_jax.interop.state_dict import InteropError, read_file, write_file
from ssl4eo_jax.interop.vit_weights import state_dict_to_vit, vit_encoder_to_state_dict

__all__ = [
    "InteropError", "LoadedEncoder", "Normalisation", "PRESETS", "RunCheckpoint", "TorchResNet", "TorchViT",
    "encoder_to_state_dict", "load_encoder", "load_encoder_variables", "load_torch_resnet", "load_torch_vit",
    "load_torch_weights", "projector_to_state_dict", "read_file", "read_sidecar", "restore_run",
    "state_dict_to_encoder", "state_dict_to_projector", "state_dict_to_vit", "vit_encoder_to_state_dict", "write_file",
]
