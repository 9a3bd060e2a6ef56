"""An encoder plus a linear head trained on augmented images: fine-tuning, the supervised baseline
and (with the encoder frozen) the reference linear-probe protocol.

* Fine-tuning (``freeze_encoder=False``): every layer trains. The reference
  (``bigearthnet_B12_moco_FT.py``): SGD momentum 0.9, no weight decay, lr 0.1 (0.02 at 1 %), decay
  x0.2 at epochs 20 and 40 of 50, one lr for all layers (its ``--lr_last_layer`` is overwritten),
  ``RandomResizedCrop`` + horizontal flip.
* Supervised from scratch: the same code from a randomly initialised encoder. (The reference trains
  it with SGD lr 0.2 and ``ReduceLROnPlateau``; we use the fine-tuning schedule so that the two
  differ only in the initialisation.)
* Reference linear probe (``freeze_encoder=True``): the encoder's weights are frozen (a stop-gradient
  on its features; the optimizer leaves it untouched) but its BatchNorm stays in **train mode**, so it
  normalises with batch statistics and its running statistics keep updating, as in the reference's
  ``model.train()`` probe; evaluation then uses the updated running statistics.

The head is ``Dense`` initialised N(0, 0.01) with zero bias (the reference's ``fc``); the loss is
softmax cross-entropy, or sigmoid BCE (== ``MultiLabelSoftMarginLoss``) for multi-label data.

The encoder is a ResNet or a ViT (``encoders.py``). A ViT fine-tunes with layer-wise lr decay when
``config.train.layer_decay`` < 1 (MAE's recipe, ``layer_decay.py``), and always with MAE's
``param_groups_lrd`` weight-decay groups (none on 1-D parameters, ``pos_embed`` and ``cls_token``).
MAE's drop-path, mixup/cutmix, label smoothing, RandAugment and random erasing are not implemented,
and its mean pooling (``config.eval.pool="mean"``) here averages the patch tokens after the
pre-trained final norm instead of normalising their average with a new ``fc_norm``. The
training runs in the loop pre-training runs (``loop.TrainLoop``): asynchronous metrics, the transfer
guard, images/s, the NaN check, progress, and orbax checkpoints of the state, the data iterator and
the config, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl4eo_jax import augment, rng, sharding
from ssl4eo_jax.checkpoint import Checkpointer
from ssl4eo_jax.data import pipeline
from ssl4eo_jax.evaluators.encoders import Encoder, input_bands
from ssl4eo_jax.evaluators.layer_decay import check_layer_decay, layer_decay_optimizer
from ssl4eo_jax.evaluators.linear import classification_loss
from ssl4eo_jax.loop import LoopSettings, TrainLoop
from ssl4eo_jax.methods.nets import apply_train
from ssl4eo_jax.models.vit import ViT
from ssl4eo_jax.optim import make_optimizer
from ssl4eo_jax.report import MetricsLog


class Classifier(nn.Module):
    """encoder -> (stop-gradient when frozen) -> linear head; returns logits."""

    encoder: Encoder
    num_classes: int
    freeze_encoder: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        h = self.encoder(x, train=train)
        if self.freeze_encoder:
            h = jax.lax.stop_gradient(h)
        return self.head(self.num_classes)(h.astype(jnp.float32))

    @staticmethod
    def head(num_classes: int) -> nn.Dense:
        return nn.Dense(num_classes, kernel_init=nn.initializers.normal(0.01), name="head")


@dataclasses.dataclass
class Task:
    """What to train: the encoder and its variables, the labels, and the input mapping."""

    encoder: Encoder
    variables: dict[str, Any]  # the encoder's {"params", "batch_stats"} ({} for a ViT)
    num_classes: int
    multi_label: bool
    mean: np.ndarray  # per band of the data, for (x - mean) / std
    std: np.ndarray
    bands: Callable[[jnp.ndarray], jnp.ndarray] | None = None  # data bands -> encoder bands


def batch_for(n: int, batch: int, devices: int) -> int:
    """The configured batch, or the largest multiple of ``devices`` that fits a small subset."""
    if n >= batch:
        return batch
    fitted = (n // devices) * devices
    if fitted == 0:
        raise ValueError(f"The training subset has {n} patches, fewer than the {devices} devices; "
                         "use a larger label fraction.")
    logging.info("The training subset (%d) is smaller than the batch (%d): using batch %d.", n, batch, fitted)
    return fitted


def _init_state(model: Classifier, task: Task, tx: optax.GradientTransformation, size: int, seed: int,
                mesh: jax.sharding.Mesh) -> dict[str, Any]:
    num_bands = input_bands(task.variables["params"])
    images = jax.ShapeDtypeStruct((2, size, size, num_bands), jnp.float32)
    dim = jax.eval_shape(lambda v, x: task.encoder.apply(v, x, train=False), task.variables, images).shape[-1]

    def init(encoder: dict[str, Any]) -> dict[str, Any]:
        head = Classifier.head(model.num_classes).init(rng.stream(seed, "finetune/head"), jnp.zeros((1, dim), jnp.float32))["params"]
        params = {"encoder": encoder["params"], "head": head}
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "batch_stats": {"encoder": encoder["batch_stats"]}, "opt": tx.init(params)}

    return jax.jit(init, out_shardings=sharding.replicated(mesh))(task.variables)


def _optimizer(cfg: Any, spe: float, n_steps: int, freeze: bool, encoder: Encoder
               ) -> tuple[optax.GradientTransformation, Callable]:
    """``config.train.optim``; for a ViT being fine-tuned, in MAE's groups with ``layer_decay``."""
    decay = check_layer_decay(cfg.get("layer_decay", 1.0), isinstance(encoder, ViT))
    tx, lr_fn = make_optimizer(cfg.optim, spe, n_steps)
    if freeze:  # only the head is optimised (its stop-gradient already zeroes the encoder's gradients)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   {"encoder": "frozen", "head": "train"})
    elif isinstance(encoder, ViT):
        tx = layer_decay_optimizer(lambda c: make_optimizer(c, spe, n_steps)[0], cfg.optim, encoder.depth, decay)
    return tx, lr_fn


def _train_step(model: Classifier, task: Task, tx: optax.GradientTransformation, lr_fn: Callable, cfg: Any,
                mesh: jax.sharding.Mesh) -> Callable:
    aug_key = rng.stream(cfg.seed, "finetune/augment")
    mean, std = jnp.asarray(task.mean), jnp.asarray(task.std)
    specs = augment.view_specs(cfg.aug)[:1]

    def step_fn(state: dict[str, Any], batch: dict[str, jax.Array]) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        # As in pre-training: ops on the physical values, normalised with the data's statistics
        # last, then mapped onto the encoder's bands.
        view = augment.make_views(jax.random.fold_in(aug_key, state["step"]), batch["image"], batch["index"],
                                  cfg.aug, mean, std, specs, bands=task.bands)[0]
        targets = batch["multi_hot"] if task.multi_label else jax.nn.one_hot(batch["label"], task.num_classes)

        def loss_fn(params: Any) -> tuple[jax.Array, Any]:
            logits, batch_stats = apply_train(model, params, state["batch_stats"], view)
            return classification_loss(logits, targets, task.multi_label), batch_stats

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
               "batch_stats": batch_stats, "opt": opt}
        return new, {"loss": loss, "lr": lr_fn(state["step"])}

    replicated = sharding.replicated(mesh)
    return jax.jit(step_fn, in_shardings=(replicated, sharding.batch_sharded(mesh)),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def train_classifier(task: Task, cfg: Any, train_source: Any, mesh: jax.sharding.Mesh, workdir: str,
                     config_dict: dict[str, Any], freeze_encoder: bool, desc: str = "fine-tuning"
                     ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Trains encoder + head on ``train_source`` (``cfg``: batch, epochs, steps, optim, aug, seed,
    checkpoint_every, log_every, workers, transfer_guard) in the shared training loop
    (``loop.TrainLoop``); resumes from ``<workdir>/checkpoints``.

    Returns the encoder variables, the head (``kernel``, ``bias``) and a summary (steps, losses, images/s).
    """
    began = time.time()
    batch = batch_for(len(train_source), cfg.batch, mesh.devices.size)
    spe = len(train_source) / batch
    n_steps = int(cfg.steps) if cfg.get("steps", 0) else max(1, int(np.ceil(cfg.epochs * spe)))
    model = Classifier(task.encoder, task.num_classes, freeze_encoder)
    tx, lr_fn = _optimizer(cfg, spe, n_steps, freeze_encoder, task.encoder)
    state = _init_state(model, task, tx, cfg.aug.crop_size, cfg.seed, mesh)
    data_iter = pipeline.DeviceIterator(pipeline.train_dataset(train_source, batch, cfg.seed), mesh,
                                        workers=cfg.get("workers", 0))
    ckpt = Checkpointer(workdir, keep=1)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(start, state, data_iter, config_dict)
        logging.info("Resumed %s from %s at step %d", desc, ckpt.directory, start)
    is_main = jax.process_index() == 0
    log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), resume_step=start, enabled=is_main)
    logging.info("%s: %d steps (%.1f epochs of %d patches) at batch %d", desc, n_steps, n_steps / spe,
                 len(train_source), batch)
    settings = LoopSettings(
        desc=desc, total_steps=n_steps, global_batch=batch, steps_per_epoch=spe, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, transfer_guard=cfg.get("transfer_guard", "allow"),
        show_progress=is_main, divergence_fix=f"Lower config.train.base_lr (now {cfg.get('base_lr', cfg.optim.get('lr'))}).")
    result = TrainLoop(settings, _train_step(model, task, tx, lr_fn, cfg, mesh), data_iter, ckpt, config_dict,
                       log).run(state, start)
    ckpt.close()
    data_iter.close()
    state = jax.device_get(result.state)
    encoder = {"params": state["params"]["encoder"], "batch_stats": state["batch_stats"]["encoder"]}
    summary = {"steps": n_steps, "batch": batch, "epochs": n_steps / spe, "resumed_from": start,
               "first_loss": result.first_loss, "last_loss": result.last.get("loss"),
               "compile_seconds": result.compile_seconds, "images_per_sec": result.images_per_sec,
               "layer_decay": float(cfg.get("layer_decay", 1.0)), "train_seconds": time.time() - began}
    return encoder, dict(state["params"]["head"]), summary
