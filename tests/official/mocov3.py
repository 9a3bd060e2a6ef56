"""MoCo v3's official training step for ViTs, re-written in PyTorch from facebookresearch/moco-v3.

Mirrors:

* ``moco/builder.py``: ``MoCo.__init__`` (base and momentum encoders built by the same factory with
  ``num_classes=mlp_dim``, the momentum encoder's parameters copied from the base's and
  ``requires_grad=False``), ``MoCo._build_mlp`` (Linear without bias, BN, ReLU, ..., Linear, and with
  ``last_bn`` a ``BatchNorm1d(affine=False)``), ``MoCo_ViT._build_projector_and_predictor_mlps``
  (projector ``_build_mlp(3, hidden_dim, mlp_dim, dim)`` as each encoder's ``head``, predictor
  ``_build_mlp(2, dim, mlp_dim, dim)``: for ViTs *with* the last BN, unlike ``MoCo_ResNet``'s
  ``_build_mlp(2, dim, mlp_dim, dim, False)``), ``MoCo._update_momentum_encoder``,
  ``MoCo.contrastive_loss`` and ``MoCo.forward`` (queries of both views, then, under ``no_grad``, the
  momentum update with this iteration's ``m`` and the keys of both views; ``ctr(q1, k2) + ctr(q2, k1)``);
  ``concat_all_gather`` on one process is the identity and ``get_rank()`` is 0.
* ``main_moco.py``: ``train`` (per iteration: ``adjust_learning_rate(optimizer, epoch + i /
  iters_per_epoch, args)`` and, with ``--moco-m-cos``, ``adjust_moco_momentum(epoch + i /
  iters_per_epoch, args)`` *before* the forward; ``optimizer.zero_grad()``, backward, step),
  ``adjust_learning_rate`` (linear warm-up from 0, then a half-cycle cosine to 0, in fractional
  epochs), ``adjust_moco_momentum`` (``1 - 0.5 (1 + cos(pi epoch / epochs)) (1 - moco_m)``),
  ``main_worker``'s ``args.lr = args.lr * args.batch_size / 256`` and
  ``torch.optim.AdamW(model.parameters(), args.lr, weight_decay=args.weight_decay)``: one group, every
  parameter with a gradient decayed (biases and norms too); parameters without ``requires_grad``
  (the momentum encoder; with ``--stop-grad-conv1`` the patch projection; the fixed ``pos_embed``)
  get no gradient, so AdamW skips them: no update, no decay.
* ``vits.py``: ``VisionTransformerMoCo`` with ``stop_grad_conv1`` (``patch_embed.proj.weight`` and
  ``.bias`` with ``requires_grad=False``) and the fixed 2-D sine-cosine ``pos_embed``
  (``requires_grad=False``). The ViT itself is the caller's (``base_encoder``): a timm-layout model
  whose ``head`` this module replaces by the projector.

Set-up differences (none changes the update): one process (``concat_all_gather`` and SyncBN are then
identities); no mixed precision (``autocast``/``GradScaler``: the step runs in the dtype the caller
chooses); the encoders' weights are the caller's (the test's: ours), not ``vits.py``'s random init.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn


def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True) -> nn.Sequential:
    """``MoCo._build_mlp``."""
    mlp = []
    for layer in range(num_layers):
        dim1 = input_dim if layer == 0 else mlp_dim
        dim2 = output_dim if layer == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if layer < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            # follow SimCLR's design; gamma removed from the BN
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


def stop_grad_conv1(vit: nn.Module) -> nn.Module:
    """``vits.py`` ``VisionTransformerMoCo.__init__``: ``--stop-grad-conv1`` freezes the patch
    projection, and the sine-cosine ``pos_embed`` is fixed (``requires_grad=False``)."""
    vit.patch_embed.proj.weight.requires_grad = False
    vit.patch_embed.proj.bias.requires_grad = False
    vit.pos_embed.requires_grad = False
    return vit


class MoCoViT(nn.Module):
    """``MoCo_ViT``: ``base_encoder`` is a factory ``(num_classes) -> ViT`` with a ``head`` Linear."""

    def __init__(self, base_encoder: Callable[..., nn.Module], dim: int = 256, mlp_dim: int = 4096, T: float = 1.0):
        super().__init__()
        self.T = T
        self.base_encoder = base_encoder(num_classes=mlp_dim)
        self.momentum_encoder = base_encoder(num_classes=mlp_dim)
        # MoCo_ViT._build_projector_and_predictor_mlps
        hidden_dim = self.base_encoder.head.weight.shape[1]
        del self.base_encoder.head, self.momentum_encoder.head  # remove original fc layer
        self.base_encoder.head = build_mlp(3, hidden_dim, mlp_dim, dim)
        self.momentum_encoder.head = build_mlp(3, hidden_dim, mlp_dim, dim)
        self.predictor = build_mlp(2, dim, mlp_dim, dim)

        for param_b, param_m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            param_m.data.copy_(param_b.data)  # initialize
            param_m.requires_grad = False  # not update by gradient

    @torch.no_grad()
    def _update_momentum_encoder(self, m: float) -> None:
        """Momentum update of the momentum encoder (parameters only; BN buffers are its own)."""
        for param_b, param_m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            param_m.data = param_m.data * m + param_b.data * (1. - m)

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q = nn.functional.normalize(q, dim=1)
        k = nn.functional.normalize(k, dim=1)
        k = concat_all_gather(k)
        logits = torch.einsum("nc,mc->nm", [q, k]) / self.T
        n = logits.shape[0]  # batch size per GPU
        rank = 0  # torch.distributed.get_rank() of the one process
        labels = torch.arange(n, dtype=torch.long) + n * rank
        return nn.CrossEntropyLoss()(logits, labels) * (2 * self.T)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float) -> torch.Tensor:
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():  # no gradient
            self._update_momentum_encoder(m)  # update the momentum encoder
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        return self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``concat_all_gather`` with one process: the tensor itself."""
    return torch.cat([tensor], dim=0)


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: float, args) -> float:
    """``main_moco.py``: half-cycle cosine after a linear warm-up."""
    if epoch < args.warmup_epochs:
        lr = args.lr * epoch / args.warmup_epochs
    else:
        lr = args.lr * 0.5 * (1. + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    return lr


def adjust_moco_momentum(epoch: float, args) -> float:
    """``main_moco.py``: the momentum's half-cycle cosine from ``moco_m`` to 1."""
    return 1. - 0.5 * (1. + math.cos(math.pi * epoch / args.epochs)) * (1. - args.moco_m)


def make_optimizer(model: MoCoViT, args) -> torch.optim.AdamW:
    """``main_worker``: ``args.lr`` (already ``lr * batch_size / 256``), AdamW on every parameter."""
    return torch.optim.AdamW(model.parameters(), args.lr, weight_decay=args.weight_decay)


def train_step(model: MoCoViT, optimizer: torch.optim.Optimizer, epoch: int, i: int, iters_per_epoch: int,
               x1: torch.Tensor, x2: torch.Tensor, args) -> tuple[float, float, float]:
    """One iteration of ``main_moco.py`` ``train``; returns (loss, lr, moco_m)."""
    model.train()
    lr = adjust_learning_rate(optimizer, epoch + i / iters_per_epoch, args)
    moco_m = args.moco_m
    if args.moco_m_cos:
        moco_m = adjust_moco_momentum(epoch + i / iters_per_epoch, args)
    loss = model(x1, x2, moco_m)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item(), lr, moco_m
