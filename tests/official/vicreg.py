"""One training step of VICReg as the official PyTorch code takes it.

Mirrors facebookresearch/vicreg ``main_vicreg.py``: ``Projector`` (Linear with bias + BN + ReLU
blocks, then a Linear without bias), ``VICReg.forward`` (``F.mse_loss`` invariance, the variance
hinge on ``sqrt(var + 1e-4)`` with the unbiased variance, the covariance term over
``batch_size - 1`` and ``num_features``), ``off_diagonal``, ``exclude_bias_and_norm``, ``LARS``
(the optimizer over ``model.parameters()``, one group) and ``adjust_learning_rate`` (10 warm-up
epochs from 0, then cosine to ``0.001 x base_lr``, ``base_lr = args.base_lr * batch_size / 256``);
the loop body is ``main``'s.

Written from the official logic for the step-equivalence tests; differences of set-up only: one
process (``FullGatherLayer`` and SyncBN are then identities; ``args.batch_size`` is the global batch),
no AMP (float32), and the backbone is given (the official builds ``resnet50(zero_init_residual=True)``
from its ``resnet.py``; the test passes a ResNet-18 holding our weights).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn, optim

# main_vicreg.py's off_diagonal, exclude_bias_and_norm and LARS are barlowtwins main.py's, line for line.
from tests.official.barlow import LARS, exclude_bias_and_norm, off_diagonal  # noqa: F401


def Projector(args: Any, embedding: int) -> nn.Sequential:  # noqa: N802 (the official name)
    """``main_vicreg.py: Projector``: the expander ``f"{embedding}-{args.mlp}"``."""
    mlp_spec = f"{embedding}-{args.mlp}"
    layers: list[nn.Module] = []
    f = list(map(int, mlp_spec.split("-")))
    for i in range(len(f) - 2):
        layers.append(nn.Linear(f[i], f[i + 1]))
        layers.append(nn.BatchNorm1d(f[i + 1]))
        layers.append(nn.ReLU(True))
    layers.append(nn.Linear(f[-2], f[-1], bias=False))
    return nn.Sequential(*layers)


class VICReg(nn.Module):
    """``main_vicreg.py: VICReg`` on a given backbone with ``embedding`` features."""

    def __init__(self, args: Any, backbone: nn.Module, embedding: int):
        super().__init__()
        self.args = args
        self.num_features = int(args.mlp.split("-")[-1])
        self.backbone, self.embedding = backbone, embedding  # official: resnet50(zero_init_residual=True)
        self.projector = Projector(args, self.embedding)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.projector(self.backbone(x))
        y = self.projector(self.backbone(y))

        repr_loss = F.mse_loss(x, y)

        # official: x, y = cat(FullGatherLayer.apply(.)) over the GPUs; one process here
        x = x - x.mean(dim=0)
        y = y - y.mean(dim=0)

        std_x = torch.sqrt(x.var(dim=0) + 0.0001)
        std_y = torch.sqrt(y.var(dim=0) + 0.0001)
        std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2

        cov_x = (x.T @ x) / (self.args.batch_size - 1)
        cov_y = (y.T @ y) / (self.args.batch_size - 1)
        cov_loss = off_diagonal(cov_x).pow_(2).sum().div(self.num_features) + off_diagonal(cov_y).pow_(2).sum().div(
            self.num_features)

        return self.args.sim_coeff * repr_loss + self.args.std_coeff * std_loss + self.args.cov_coeff * cov_loss


def make_optimizer(args: Any, model: nn.Module, eta: float = 0.001) -> LARS:
    """``main_vicreg.py: main``'s optimizer (``eta`` is the official default unless the test sets it)."""
    return LARS(model.parameters(), lr=0, weight_decay=args.wd, eta=eta, weight_decay_filter=exclude_bias_and_norm,
                lars_adaptation_filter=exclude_bias_and_norm)


def adjust_learning_rate(args: Any, optimizer: optim.Optimizer, loader_len: float, step: int) -> float:
    """``main_vicreg.py: adjust_learning_rate``; ``loader_len`` is the official ``len(loader)``."""
    max_steps = args.epochs * loader_len
    warmup_steps = 10 * loader_len
    base_lr = args.base_lr * args.batch_size / 256
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    return lr


def train_step(args: Any, model: VICReg, optimizer: LARS, loader_len: float, step: int, x: torch.Tensor,
               y: torch.Tensor) -> tuple[float, float]:
    """The body of ``main_vicreg.py: main``'s loop (without AMP): (loss, lr)."""
    lr = adjust_learning_rate(args, optimizer, loader_len, step)
    optimizer.zero_grad()
    loss = model.forward(x, y)
    loss.backward()
    optimizer.step()
    return loss.item(), lr
