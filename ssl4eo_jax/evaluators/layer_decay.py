"""Layer-wise learning-rate decay for fine-tuning ViTs: MAE's ``util/lr_decay.py`` ``param_groups_lrd``.

Each parameter of the classifier (``{"encoder": ..., "head": ...}``) gets a layer id, as
``get_layer_id_for_vit``: 0 for ``cls_token``, ``pos_embed`` and ``patch_embed``, ``i + 1`` for
``blocks_i``, and ``num_layers = depth + 1`` for everything else (the final ``norm``, the head). Its
learning rate is ``lr * layer_decay ** (num_layers - layer_id)``: the head's is the base lr, each
block below it ``layer_decay`` times the one above. As ``param_groups_lrd``, 1-D parameters (biases,
norms) and ``pos_embed`` / ``cls_token`` (the ViT's ``no_weight_decay()``) get no weight decay.

Scaling the optimizer's final update by the multiplier is what PyTorch's per-group ``lr`` does for
AdamW (``p -= lr * scale * (adam_step + wd * p)``) and for SGD with momentum (the buffer does not
depend on the lr); the decayed and the not-decayed groups are two instances of ``config.optim``'s
optimizer, the second with ``weight_decay=0``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssl4eo_jax.errors import ConfigError

NO_WEIGHT_DECAY = ("pos_embed", "cls_token")  # models_vit.VisionTransformer.no_weight_decay() (less dist_token)
LAYER_ZERO = ("cls_token", "pos_embed", "patch_embed")


def _names(path: tuple) -> list[str]:
    return [str(getattr(k, "key", k)) for k in path]


def layer_id(names: list[str], num_layers: int) -> int:
    """``get_layer_id_for_vit`` on a classifier parameter's path (``["encoder", "blocks_3", ...]``)."""
    if names[0] != "encoder" or len(names) < 2:
        return num_layers  # the head
    top = names[1]
    if top in LAYER_ZERO:
        return 0
    if top.startswith("blocks_"):
        return int(top.split("_")[1]) + 1
    return num_layers


def lr_scales(params: Any, depth: int, decay: float) -> Any:
    """The lr multiplier of each leaf of the classifier's ``params``: ``decay ** (depth + 1 - layer_id)``."""
    num_layers = depth + 1
    return jax.tree_util.tree_map_with_path(
        lambda path, _: float(decay) ** (num_layers - layer_id(_names(path), num_layers)), params)


def weight_decayed(params: Any) -> Any:
    """True for the leaves with weight decay: not 1-D and not ``pos_embed`` / ``cls_token``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.ndim(p) > 1 and _names(path)[-1] not in NO_WEIGHT_DECAY, params)


def check_layer_decay(decay: float, is_vit: bool) -> float:
    """``config.train.layer_decay`` validated: in (0, 1], and other than 1 only for ViTs."""
    decay = float(decay)
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"config.train.layer_decay={decay} must be in (0, 1] (1.0: off; MAE: 0.65 for ViT-B, "
                          "0.75 for ViT-L/H).")
    if decay != 1.0 and not is_vit:
        raise ConfigError(f"config.train.layer_decay={decay} is for ViT encoders (MAE's layer-wise lr decay); "
                          "this encoder is a ResNet: use 1.0.")
    return decay


def layer_decay_optimizer(make: Callable[[Any], optax.GradientTransformation], optim_cfg: Any, depth: int,
                          decay: float) -> optax.GradientTransformation:
    """``param_groups_lrd`` as optax: ``make(cfg)`` builds ``config.optim``'s optimizer; the decayed
    group gets ``optim_cfg``, the other the same with ``weight_decay=0``; every update is then scaled
    by its ``lr_scales``."""
    no_decay = optim_cfg.to_dict() if isinstance(optim_cfg, ml_collections.ConfigDict) else dict(optim_cfg)
    no_decay["weight_decay"] = 0.0
    no_decay.pop("weight_decay_end", None)
    labels = lambda params: jax.tree.map(lambda d: "decay" if d else "no_decay", weight_decayed(params))  # noqa: E731
    groups = optax.multi_transform({"decay": make(optim_cfg), "no_decay": make(ml_collections.ConfigDict(no_decay))},
                                   labels)
    scale = optax.stateless(lambda updates, params: jax.tree.map(
        lambda u, s: u * jnp.asarray(s, u.dtype), updates, lr_scales(updates, depth, decay)))
    return optax.chain(groups, scale)
