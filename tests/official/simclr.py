"""SimCLR's official training step (google-research/simclr, TF v1), re-implemented in PyTorch.

Mirrors:

* ``model.py`` ``model_fn`` (pretrain): the two views concatenated along the batch
  (``tf.concat(features_list, 0)``) through the base network and ``projection_head``, then
  ``add_contrastive_loss``; ``train_op`` = the LARS update at ``learning_rate_schedule(step)``.
* ``resnet.py`` ``batch_norm_relu`` with ``global_bn``: BN statistics over the whole batch, i.e.
  over both views at once (one replica here, so ``cross_replica_average`` is the identity).
* ``model_util.py`` ``projection_head`` (``proj_head_mode='nonlinear'``) and ``linear_layer``:
  Dense without bias (``use_bias and not use_bn``) + BN (centre = ``use_bias``) + ReLU, then Dense
  to ``proj_out_dim`` without bias + BN with ``center=False`` (a scale, no shift).
* ``objective.py`` ``add_contrastive_loss``: ``hidden_norm`` (``tf.math.l2_normalize``), the
  ``LARGE_NUM`` masking of the self-similarities, ``loss_a + loss_b`` (two softmax cross-entropies,
  each a mean over its view's anchors).
* ``lars_optimizer.py`` ``LARSOptimizer`` (``classic_momentum=True``, no Nesterov, ``eeta`` 0.001,
  ``exclude_from_weight_decay=['batch_normalization', 'bias']``, which also excludes those from
  the layer adaptation) and ``model_util.py`` ``learning_rate_schedule`` (linear warm-up from 0,
  then ``tf.train.cosine_decay``).

BatchNorm conventions: TF's ``BatchNormalization(momentum=BATCH_NORM_DECAY=0.9,
epsilon=BATCH_NORM_EPSILON=1e-5)`` keeps 0.9 of the running statistics, i.e. PyTorch's
``momentum=0.1``, with the same epsilon. One convention differs: TF's (non-fused) BN updates the
moving variance with the *biased* batch variance, PyTorch (and ours, ``models/batchnorm.py``) with
the unbiased one. This re-implementation uses PyTorch's BN, so the running variances are compared
under PyTorch's convention; the normalisation itself (biased variance) is the same in both.
Also differing, only for vanishing vectors: ``tf.math.l2_normalize`` floors the squared norm at
1e-12, ours (``F.normalize``'s) the norm.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

LARGE_NUM = 1e9
EETA_DEFAULT = 0.001


class ScaleOnlyBN(nn.Module):
    """TF ``BatchNormalization(center=False, scale=True)``: normalise, then a learned gamma, no beta."""

    def __init__(self, num: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(num, affine=False)
        self.gamma = nn.Parameter(torch.ones(num))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gamma


class ProjectionHead(nn.Module):
    """``model_util.projection_head``, ``nonlinear`` mode (two ``linear_layer`` calls)."""

    def __init__(self, nl_0: nn.Linear, bn_0: nn.BatchNorm1d, nl_1: nn.Linear, bn_1: ScaleOnlyBN):
        super().__init__()
        assert nl_0.bias is None and nl_1.bias is None  # use_bias and not use_bn
        self.nl_0, self.bn_0, self.nl_1, self.bn_1 = nl_0, bn_0, nl_1, bn_1

    def forward(self, hiddens: torch.Tensor) -> torch.Tensor:
        hiddens = F.relu(self.bn_0(self.nl_0(hiddens)))  # linear_layer(use_bias=True, use_bn=True), relu
        return self.bn_1(self.nl_1(hiddens))  # linear_layer(use_bias=False, use_bn=True): center=False


class SimCLR(nn.Module):
    """``model_fn``'s pretrain graph: base network + projection head."""

    def __init__(self, base_model: nn.Module, head: ProjectionHead):
        super().__init__()
        self.base_model = base_model
        self.head_contrastive = head

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        features = torch.cat([view1, view2], 0)  # tf.concat(features_list, 0): (2 * bsz, ...)
        hiddens = self.base_model(features)  # global_bn: statistics over both views
        return self.head_contrastive(hiddens)


def add_contrastive_loss(hidden: torch.Tensor, hidden_norm: bool = True, temperature: float = 1.0) -> torch.Tensor:
    """``objective.py`` ``add_contrastive_loss`` on one replica (``tpu_context=None``)."""
    if hidden_norm:
        # tf.math.l2_normalize: x * rsqrt(max(sum(x^2), 1e-12))
        hidden = hidden * torch.rsqrt(torch.clamp(torch.sum(hidden * hidden, -1, keepdim=True), min=1e-12))
    hidden1, hidden2 = torch.split(hidden, hidden.shape[0] // 2, 0)
    batch_size = hidden1.shape[0]
    hidden1_large, hidden2_large = hidden1, hidden2
    labels = F.one_hot(torch.arange(batch_size), batch_size * 2).to(hidden.dtype)
    masks = F.one_hot(torch.arange(batch_size), batch_size).to(hidden.dtype)

    logits_aa = hidden1 @ hidden1_large.T / temperature
    logits_aa = logits_aa - masks * LARGE_NUM
    logits_bb = hidden2 @ hidden2_large.T / temperature
    logits_bb = logits_bb - masks * LARGE_NUM
    logits_ab = hidden1 @ hidden2_large.T / temperature
    logits_ba = hidden2 @ hidden1_large.T / temperature

    # tf.losses.softmax_cross_entropy(labels, logits): mean over the batch of -sum(labels * log_softmax)
    def softmax_cross_entropy(onehot: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.mean(-torch.sum(onehot * F.log_softmax(logits, dim=1), dim=1))

    loss_a = softmax_cross_entropy(labels, torch.cat([logits_ab, logits_aa], 1))
    loss_b = softmax_cross_entropy(labels, torch.cat([logits_ba, logits_bb], 1))
    return loss_a + loss_b


def learning_rate_schedule(global_step: int, base_learning_rate: float, train_batch_size: int, warmup_steps: int,
                           total_steps: int) -> float:
    """``model_util.py`` ``learning_rate_schedule``: ``scaled_lr = base * B / 256``; during the
    warm-up ``step / warmup_steps * scaled_lr`` (0 at step 0); then
    ``tf.train.cosine_decay(scaled_lr, step - warmup_steps, total_steps - warmup_steps)``.
    (The official derives ``warmup_steps`` from ``warmup_epochs * num_examples // batch`` and
    ``total_steps`` from ``train_steps`` or the epochs; they are given here.)"""
    scaled_lr = base_learning_rate * train_batch_size / 256.0
    if warmup_steps and global_step < warmup_steps:
        return global_step / int(warmup_steps) * scaled_lr
    decay_steps = total_steps - warmup_steps
    step = min(global_step - warmup_steps, decay_steps)  # tf.train.cosine_decay clips the step
    return scaled_lr * 0.5 * (1.0 + math.cos(math.pi * step / decay_steps))


class LARSOptimizer:
    """``lars_optimizer.py`` ``LARSOptimizer.apply_gradients`` with ``classic_momentum=True`` (the
    default), ``use_nesterov=False``. ``named_params``: (TF-style name, parameter) pairs; a name
    matching a pattern of ``exclude_from_weight_decay`` gets neither weight decay nor the trust
    ratio (``exclude_from_layer_adaptation`` defaults to the same list). The momentum variable
    accumulates learning-rate-scaled gradients: ``v = m v + lr * trust * g; w -= v``."""

    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], momentum: float = 0.9,
                 use_nesterov: bool = False, weight_decay: float = 0.0,
                 exclude_from_weight_decay: list[str] | None = None, exclude_from_layer_adaptation=None,
                 classic_momentum: bool = True, eeta: float = EETA_DEFAULT):
        assert classic_momentum and not use_nesterov  # the configuration SimCLR trains with
        self.named_params = list(named_params)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.eeta = eeta
        self.exclude_from_weight_decay = exclude_from_weight_decay
        self.exclude_from_layer_adaptation = exclude_from_layer_adaptation or exclude_from_weight_decay
        self.v = {name: torch.zeros_like(p) for name, p in self.named_params}  # "/Momentum", zeros

    def _use_weight_decay(self, param_name: str) -> bool:
        if not self.weight_decay:
            return False
        for r in self.exclude_from_weight_decay or []:
            if re.search(r, param_name) is not None:
                return False
        return True

    def _do_layer_adaptation(self, param_name: str) -> bool:
        for r in self.exclude_from_layer_adaptation or []:
            if re.search(r, param_name) is not None:
                return False
        return True

    @torch.no_grad()
    def apply_gradients(self, learning_rate: float) -> None:
        for param_name, param in self.named_params:
            if param.grad is None:
                continue
            grad = param.grad.clone()
            v = self.v[param_name]
            if self._use_weight_decay(param_name):
                grad += self.weight_decay * param
            trust_ratio = torch.ones(())
            if self._do_layer_adaptation(param_name):
                w_norm = torch.linalg.norm(param)
                g_norm = torch.linalg.norm(grad)
                trust_ratio = torch.where(
                    w_norm > 0, torch.where(g_norm > 0, self.eeta * w_norm / g_norm, torch.ones(())), torch.ones(()))
            scaled_lr = learning_rate * trust_ratio
            next_v = self.momentum * v + scaled_lr * grad
            update = next_v
            param -= update
            self.v[param_name] = next_v


def tf_variable_names(model: SimCLR) -> list[tuple[str, torch.nn.Parameter]]:
    """The model's parameters under names that carry TF's scopes where the exclusion patterns
    look: every BN parameter (gamma, beta) lives under ``batch_normalization`` in TF, every Dense
    or conv weight is a ``kernel``."""
    named = []
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, ScaleOnlyBN)):
                tf_name = f"{module_name}/batch_normalization/{'beta' if pname == 'bias' else 'gamma'}"
            elif pname == "bias":
                tf_name = f"{module_name}/bias"
            else:
                tf_name = f"{module_name}/kernel"
            named.append((tf_name, p))
    return named


def make_optimizer(model: SimCLR, momentum: float = 0.9, weight_decay: float = 1e-6,
                   eeta: float = EETA_DEFAULT) -> LARSOptimizer:
    """``model_util.get_optimizer`` for ``--optimizer=lars``."""
    return LARSOptimizer(tf_variable_names(model), momentum=momentum, weight_decay=weight_decay,
                         exclude_from_weight_decay=["batch_normalization", "bias"], eeta=eeta)


def train_step(model: SimCLR, optimizer: LARSOptimizer, view1: torch.Tensor, view2: torch.Tensor,
               learning_rate: float, temperature: float = 0.1) -> float:
    """One ``train_op``: the loss on both views, its gradients, the LARS update at ``learning_rate``."""
    model.train()
    hiddens_proj = model(view1, view2)
    loss = add_contrastive_loss(hiddens_proj, hidden_norm=True, temperature=temperature)
    model.zero_grad()
    loss.backward()
    optimizer.apply_gradients(learning_rate)
    return loss.item()
