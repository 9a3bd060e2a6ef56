"""One training step of SimSiam as the official PyTorch code takes it.

Mirrors facebookresearch/simsiam ``simsiam/builder.py`` (``SimSiam.__init__``: the 3-layer projector
that replaces the encoder's ``fc``, whose own bias is kept but frozen, the last BN without affine
parameters, the 2-layer predictor; ``SimSiam.forward``: both views through the encoder, then both
through the predictor, targets detached) and ``main_simsiam.py`` (``init_lr = lr * batch / 256``, the
``fix_pred_lr`` parameter groups, ``SGD(momentum=0.9, weight_decay=1e-4)`` on every parameter, the
``nn.CosineSimilarity(dim=1)`` loss ``-(cos(p1, z2).mean() + cos(p2, z1).mean()) / 2`` of ``train``,
and ``adjust_learning_rate``: cosine per epoch, the ``fix_lr`` group at ``init_lr``).

Written from the official logic for the step-equivalence tests; differences of set-up only: one
process (the official's SyncBN over the global batch is plain BN here), and the backbone is given
(the official builds ``base_encoder(num_classes=dim, zero_init_residual=True)``; the test passes a
ResNet-18 holding our weights, which are zero-initialised the same way).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class SimSiam(nn.Module):
    """``simsiam/builder.py: SimSiam`` on a given backbone with ``prev_dim`` features (the
    official's ``encoder.fc.weight.shape[1]``)."""

    def __init__(self, backbone: nn.Module, prev_dim: int, dim: int = 2048, pred_dim: int = 512):
        super().__init__()
        # create the encoder: the official's base_encoder(num_classes=dim) has fc = Linear(prev_dim, dim)
        fc = nn.Linear(prev_dim, dim)
        fc.bias.requires_grad = False  # not use bias as followed by BN
        projector = nn.Sequential(nn.Linear(prev_dim, prev_dim, bias=False),
                                  nn.BatchNorm1d(prev_dim),
                                  nn.ReLU(inplace=True),  # first layer
                                  nn.Linear(prev_dim, prev_dim, bias=False),
                                  nn.BatchNorm1d(prev_dim),
                                  nn.ReLU(inplace=True),  # second layer
                                  fc,
                                  nn.BatchNorm1d(dim, affine=False))  # output layer
        # the official's self.encoder is the backbone with the projector as its fc
        self.encoder = nn.Sequential(backbone, projector)

        # build a 2-layer predictor
        self.predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False),
                                       nn.BatchNorm1d(pred_dim),
                                       nn.ReLU(inplace=True),  # hidden layer
                                       nn.Linear(pred_dim, dim))  # output layer

    @property
    def backbone(self) -> nn.Module:
        return self.encoder[0]

    @property
    def projector(self) -> nn.Sequential:
        return self.encoder[1]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        z1 = self.encoder(x1)  # NxC
        z2 = self.encoder(x2)  # NxC

        p1 = self.predictor(z1)  # NxC
        p2 = self.predictor(z2)  # NxC

        return p1, p2, z1.detach(), z2.detach()


def make_optimizer(args: Any, model: SimSiam, init_lr: float) -> torch.optim.SGD:
    """``main_simsiam.py: main_worker``'s parameter groups (``fix_pred_lr``) and SGD."""
    if args.fix_pred_lr:
        optim_params = [{"params": model.encoder.parameters(), "fix_lr": False},
                        {"params": model.predictor.parameters(), "fix_lr": True}]
    else:
        optim_params = model.parameters()
    return torch.optim.SGD(optim_params, init_lr, momentum=args.momentum, weight_decay=args.weight_decay)


def adjust_learning_rate(optimizer: torch.optim.Optimizer, init_lr: float, epoch: int, args: Any) -> float:
    """``main_simsiam.py: adjust_learning_rate``: cosine per epoch; the ``fix_lr`` group at ``init_lr``."""
    cur_lr = init_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    for param_group in optimizer.param_groups:
        if "fix_lr" in param_group and param_group["fix_lr"]:
            param_group["lr"] = init_lr
        else:
            param_group["lr"] = cur_lr
    return cur_lr


def train_step(args: Any, model: SimSiam, criterion: nn.Module, optimizer: torch.optim.SGD, init_lr: float,
               epoch: int, x1: torch.Tensor, x2: torch.Tensor) -> tuple[float, float]:
    """One iteration of ``main_simsiam.py: train``, after the epoch's ``adjust_learning_rate``:
    (loss, lr of the scheduled group)."""
    lr = adjust_learning_rate(optimizer, init_lr, epoch, args)
    p1, p2, z1, z2 = model(x1=x1, x2=x2)
    loss = -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item(), lr
