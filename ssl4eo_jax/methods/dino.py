"""DINO (Caron et al., ICCV 2021), as facebookresearch/dino ``main_dino.py`` with its published
ResNet-50 recipe (README: SGD, lr 0.03, weight decay 1e-4, global crops (0.14, 1), local crops
(0.05, 0.14); other arguments at their defaults).

* Student: encoder + DINO head (MLP 2048-2048-256 with GELU, no BN, L2-normalised bottleneck,
  weight-normalised last layer to ``out_dim``; ``norm_last_layer`` keeps its gain at 1). Teacher:
  the same network, an EMA of the student's parameters with momentum cosine 0.996 -> 1 over the
  run, updated after each optimizer step; its BN statistics are its own.
* Multi-crop: the student sees 2 global + ``aug.local_views`` local crops, the teacher the 2 global
  crops; crops of one size go through the encoder together (the official ``MultiCropWrapper``).
* Loss: the teacher's centred, sharpened softmax against the student's log-softmax at 0.1, every
  teacher crop against every other student crop; then the centre moves to ``0.9 * centre + 0.1 *
  mean(teacher outputs)`` over the global batch.
* Teacher temperature: linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over
  ``warmup_teacher_temp_epochs`` epochs, per epoch as the official ``np.linspace`` schedule, then
  constant (defaults 0.04 -> 0.04 over 0 epochs: constant 0.04, the official defaults that the
  ResNet-50 recipe keeps; the ViT recipes use 0.04 -> 0.07 over 30 epochs).
* The last layer is frozen during the first ``freeze_last_layer`` epochs (1), as the official
  ``cancel_gradients_last_layer``; per-parameter gradient clipping at 3.0 is ``optim.clip_grad``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl4eo_jax import losses
from ssl4eo_jax.methods.base import (
    MethodBase,
    Metrics,
    TrainLength,
    build_encoder,
    embedding_metrics,
    group_labels,
    require_length,
)
from ssl4eo_jax.methods.nets import EncoderHeads, forward_joint
from ssl4eo_jax.methods.targets import ema, momentum_at
from ssl4eo_jax.models.heads import DINOHead
from ssl4eo_jax.optim import ParamGroup, ParamGroups


def teacher_temperature(step: jnp.ndarray, steps_per_epoch: float, warmup_temp: float, temp: float,
                        warmup_epochs: int) -> jnp.ndarray:
    """The official per-epoch schedule ``concat(linspace(warmup_temp, temp, W), [temp] * rest)``."""
    epoch = jnp.floor(jnp.asarray(step, jnp.float32) / steps_per_epoch)
    if warmup_epochs <= 0:
        return jnp.asarray(temp, jnp.float32)
    fraction = epoch / (warmup_epochs - 1) if warmup_epochs > 1 else jnp.zeros_like(epoch)
    return jnp.where(epoch < warmup_epochs, warmup_temp + (temp - warmup_temp) * fraction, temp)


class DINO(MethodBase):
    name = "dino"
    # facebookresearch/dino evaluates the teacher (eval_knn.py / eval_linear.py, ``--checkpoint_key
    # teacher``) and releases teacher backbones.
    evaluated_variables = ("teacher_params", "teacher_batch_stats")

    def __init__(self, config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None):
        cfg = config.dino
        self.length = require_length(length, self.name)
        self.out_dim = int(cfg.out_dim)
        self.student_temp = float(cfg.student_temp)
        self.teacher_temps = (float(cfg.warmup_teacher_temp), float(cfg.teacher_temp),
                              int(cfg.warmup_teacher_temp_epochs))
        self.center_momentum = float(cfg.center_momentum)
        self.momentum = float(cfg.momentum_teacher)
        self.freeze_last_layer_steps = self.length.steps(float(cfg.freeze_last_layer))
        self.encoder = build_encoder(config.model)
        head = DINOHead(self.out_dim, hidden=tuple(cfg.hidden), bottleneck=int(cfg.bottleneck), use_bn=bool(cfg.use_bn),
                        norm_last_layer=bool(cfg.norm_last_layer), dtype=self.encoder.dtype)
        self.net = EncoderHeads(self.encoder, head)

    def init(self, key: jax.Array, images: jnp.ndarray) -> tuple[dict[str, Any], Any]:
        variables, _ = super().init(key, images)
        extra = {"teacher_params": variables["params"], "teacher_batch_stats": variables["batch_stats"],
                 "center": jnp.zeros((self.out_dim,), jnp.float32)}
        return variables, extra

    def teacher_temp(self, step: jnp.ndarray) -> jnp.ndarray:
        return teacher_temperature(step, self.length.steps_per_epoch, *self.teacher_temps)

    def _momentum(self, step: jnp.ndarray) -> jnp.ndarray:
        return momentum_at(step, self.momentum, self.length.total_steps, "cosine")

    def loss(self, params: Any, batch_stats: Any, extra: Any, views: list[jnp.ndarray], step: jnp.ndarray,
             key: jax.Array) -> tuple[jnp.ndarray, tuple[Any, Any, Metrics]]:
        student, batch_stats = forward_joint(self.net, params, batch_stats, views)
        teacher, teacher_stats = forward_joint(self.net, extra["teacher_params"], extra["teacher_batch_stats"], views[:2])
        student_out = [logits for _, (_, logits), _ in student]
        teacher_out = [jax.lax.stop_gradient(logits) for _, (_, logits), _ in teacher]
        temp = self.teacher_temp(step)
        loss = losses.dino(student_out, teacher_out, extra["center"], self.student_temp, temp)
        entropy = losses.dino_teacher_entropy(teacher_out, extra["center"], temp)
        center = losses.dino_center(extra["center"], teacher_out, self.center_momentum)
        extra = {**extra, "teacher_batch_stats": teacher_stats, "center": center}
        bottleneck = student[0][1][0]
        metrics = {"teacher_temp": temp, "momentum": self._momentum(step), "teacher_entropy": entropy,
                   "kl": jax.lax.stop_gradient(loss) - entropy, **embedding_metrics(bottleneck)}
        return loss, (batch_stats, extra, metrics)

    def after_update(self, params: Any, extra: Any, step: jnp.ndarray) -> tuple[Any, Any]:
        return params, {**extra, "teacher_params": ema(extra["teacher_params"], params, self._momentum(step))}

    def param_groups(self) -> ParamGroups | None:
        if self.freeze_last_layer_steps <= 0:
            return None
        return ParamGroups(lambda p: group_labels(p, {"projector/last_layer": "last_layer"}),
                           {"last_layer": ParamGroup(frozen_steps=self.freeze_last_layer_steps)})
