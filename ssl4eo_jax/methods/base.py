"""What every SSL method provides to the training loop, and the helpers they share.

A method owns its networks (an encoder plus heads), its extra state (queues, EMA targets, centres)
and its loss. The training loop owns data, augmentation, the optimizer and checkpoints. Variables
follow one convention so that evaluators and exporters work for every method: the encoder's
parameters live at ``params["encoder"]`` and its BatchNorm statistics at
``batch_stats["encoder"]``.

One step of the loop, in order::

    loss, (batch_stats, extra, metrics) = method.loss(params, batch_stats, extra, views, step, key)
    params = optimizer update of params (with method.param_groups(): constant-lr or frozen groups)
    params, extra = method.after_update(params, extra, step)   # EMA targets, prototype norms

Methods that need the length of training (momentum and temperature schedules, epoch-based
starts) get a ``TrainLength``. No method may depend on the number of devices: BatchNorm groups are
global or virtual (``nets.forward_grouped``), never per device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses, rng
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.models import check_model
from ssl4eo_jax.models.resnet import ResNet, resnet
from ssl4eo_jax.models.vit import ViT, is_vit, vit
from ssl4eo_jax.optim import ParamGroups
from ssl4eo_jax.precision import compute_dtype

Metrics = dict[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class TrainLength:
    """The length of pre-training, for schedules defined in epochs or over the whole run."""

    steps_per_epoch: float
    total_steps: int

    def steps(self, epochs: float) -> int:
        """The first step of epoch ``epochs`` (rounded: epochs may be fractional)."""
        return int(round(epochs * self.steps_per_epoch))


class Method(Protocol):
    name: str
    encoder: ResNet | ViT

    def init(self, key: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        """Returns ``{"params": ..., "batch_stats": ...}`` and the method's extra state; ``key`` is
        the run's ``init`` stream, the encoder's weights come from ``init_encoder``."""

    def loss(
        self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
        key: jax.Array,
    ) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        """The loss of one global batch of views; aux = (new batch_stats, new extra, metrics).
        ``key`` is the step's ``method`` stream (``method_key``) for the method's own draws."""

    def after_update(self, params: Any, extra: Any, step: jnp.ndarray) -> tuple[Any, Any]:
        """(params, extra) after the optimizer's update of step ``step``: EMA targets, prototype
        normalisation; the identity by default."""

    def param_groups(self) -> ParamGroups | None:
        """Parameter groups with their own lr rule or freezing, or None (one group)."""


class MethodBase:
    """Defaults of the protocol for a method whose network is ``self.net``."""

    name = "base"
    net: Any
    # The ``extra`` keys (params, batch_stats) of the network the official code evaluates and
    # publishes, where it is not the online one (DINO's teacher); None: the online network.
    evaluated_variables: tuple[str, str] | None = None

    def init(self, key: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        """The network's variables (all heads initialised), and no extra state. The encoder's
        weights come from their own stream (``init_encoder``), so every method starts from the
        same encoder for a seed, and so does the random-init baseline."""
        variables = self.net.init(key, images, train=True)
        encoder = init_encoder(self.encoder, key, images)
        params = {**variables["params"], "encoder": encoder["params"]}
        batch_stats = {**variables.get("batch_stats", {}), "encoder": encoder["batch_stats"]}
        return {"params": params, "batch_stats": batch_stats}, {}

    def after_update(self, params: Any, extra: Any, step: jnp.ndarray) -> tuple[Any, Any]:
        return params, extra

    def param_groups(self) -> ParamGroups | None:
        return None


def require_length(length: TrainLength | None, method: str) -> TrainLength:
    if length is None:
        raise ConfigError(f"Method {method!r} has schedules over the training run: build it with "
                          "get_method(config, length=TrainLength(steps_per_epoch, total_steps)).")
    return length


def build_encoder(model_cfg: Any) -> ResNet | ViT:
    """The encoder of ``config.model``: a ResNet, or a ViT (``vit_*`` names, ``models/vit.py``)."""
    check_model(model_cfg.name)
    if is_vit(model_cfg.name):
        return vit(
            model_cfg.name,
            patch_size=model_cfg.get("patch_size"),
            depth=model_cfg.get("depth"),
            img_size=model_cfg.get("img_size", 224),
            pool=model_cfg.get("pool", "token"),
            pos_embed=model_cfg.get("pos_embed", "learned"),
            weight_init=model_cfg.get("weight_init", "xavier"),
            dtype=compute_dtype(model_cfg.get("dtype", "auto")),
        )
    return resnet(
        model_cfg.name,
        stem=model_cfg.get("stem", "imagenet"),
        width=model_cfg.get("width", 64),
        zero_init_residual=model_cfg.get("zero_init_residual", False),
        dtype=compute_dtype(model_cfg.get("dtype", "auto")),
    )


def method_key(seed: int, step: jnp.ndarray) -> jax.Array:
    """The key ``Method.loss`` receives at ``step``: the ``method`` stream with the step folded in."""
    return jax.random.fold_in(rng.stream(seed, "method"), step)


def init_encoder(encoder: ResNet | ViT, init_key: jax.Array, images: jnp.ndarray) -> dict[str, Any]:
    """The encoder's initial ``{"params", "batch_stats"}`` from the ``init/encoder`` stream of
    ``init_key`` (``rng.stream(seed, "init")``): a pure function of the seed and the model config.
    A ViT has no BatchNorm: its ``batch_stats`` are ``{}``."""
    variables = encoder.init(rng.derive(init_key, "init/encoder"), images, train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def encoder_variables(variables: dict[str, Any]) -> dict[str, Any]:
    """The encoder's ``{"params", "batch_stats"}`` out of a method's variables (or a train state)."""
    return {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}


def evaluated_network(method: str) -> str:
    """"teacher" or "online": which of the method's networks evaluation and export read (the
    method class's ``evaluated_variables``)."""
    return "online" if _evaluated_variables(method) is None else "teacher"


def _evaluated_variables(method: str) -> tuple[str, str] | None:
    from ssl4eo_jax.methods import METHODS  # the registry imports this module

    cls = METHODS.get(method)
    return getattr(cls, "evaluated_variables", None) if cls is not None else None


def evaluated_encoder(state: dict[str, Any], method: str) -> dict[str, Any]:
    """The encoder that the method's official code evaluates, out of a train state (with ``extra``)."""
    keys = _evaluated_variables(method)
    if keys is None:
        return encoder_variables(state)
    params_key, stats_key = keys
    extra = state.get("extra") or {}
    if params_key not in extra:  # variables at initialisation: the teacher starts as the student
        return encoder_variables(state)
    return encoder_variables({"params": extra[params_key], "batch_stats": extra[stats_key]})


def group_labels(params: Any, groups: dict[str, str]) -> Any:
    """Labels for ``ParamGroups``: ``groups`` maps a path prefix of ``params`` ("predictor",
    "projector/last_layer") to its group; every other leaf is "default"."""

    def label(path: tuple, _: Any) -> str:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        for prefix, group in groups.items():
            if name == prefix or name.startswith(prefix + "/"):
                return group
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


# ----------------------------------------------------------------------------- collapse metrics


def embedding_std(z: jnp.ndarray) -> jnp.ndarray:
    """Mean per-dimension std of L2-normalised embeddings; ~1/sqrt(D) when healthy, 0 at collapse."""
    z = losses.l2_normalize(z)
    return jnp.mean(jnp.std(z, axis=0))


def effective_rank(z: jnp.ndarray) -> jnp.ndarray:
    """Roy & Vetterli (2007): exp of the Shannon entropy of the L1-normalised singular values of the
    batch-centred (N, D) matrix; between 1 and min(N, D), 0 for a constant batch.

    Singular values straight from an SVD (O(min(N, D)^2 max(N, D)), a few ms for a batch): those
    from a Gram matrix's eigenvalues would turn float32 round-off into spurious small values."""
    z = z.astype(jnp.float32)
    s = jnp.linalg.svd(z - jnp.mean(z, axis=0), compute_uv=False)
    total = jnp.sum(s)
    p = s / jnp.maximum(total, 1e-30)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.where(total > 0, jnp.exp(entropy), 0.0)


def embedding_metrics(z: jnp.ndarray) -> Metrics:
    """The collapse metrics of a batch of embeddings (N, D), stop-gradient:

    * ``embedding_std``: the std of the L2-normalised embeddings, mean over dimensions;
    * ``embedding_std_rel``: the same times sqrt(D), ~1 for well-spread embeddings, 0 at collapse
      (the collapse monitor's threshold is in these units, so it fits any embedding size);
    * ``effective_rank`` of the L2-normalised embeddings.
    """
    z = jax.lax.stop_gradient(losses.l2_normalize(z))
    std = embedding_std(z)
    return {"embedding_std": std, "embedding_std_rel": std * math.sqrt(z.shape[-1]), "effective_rank": effective_rank(z)}
