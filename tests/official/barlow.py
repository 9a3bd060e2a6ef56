"""One training step of Barlow Twins as the official PyTorch code takes it.

Mirrors facebookresearch/barlowtwins ``main.py``: ``BarlowTwins.__init__`` and ``BarlowTwins.forward``
(projector of bias-free Linear + BN + ReLU blocks and a bias-free last Linear, the affine-free
``self.bn``, the cross-correlation divided by ``args.batch_size``), ``off_diagonal``, ``LARS`` with
``exclude_bias_and_norm`` as weight-decay and adaptation filters, the two parameter groups of
``main_worker`` (weights, then biases and norm parameters: every 1-D parameter) and
``adjust_learning_rate`` (10 warm-up epochs from 0, then cosine to ``0.001 x base``; the weights'
and the biases' lr are the same schedule times ``args.learning_rate_weights`` and
``args.learning_rate_biases``). The loop body is ``main_worker``'s.

Written from the official logic for the step-equivalence tests; differences of set-up only:
one process (the official ``all_reduce`` of ``c`` over GPUs is then the identity and
``args.batch_size`` is the global batch, each GPU holding ``batch_size / world_size`` samples), no
AMP (float32), and the backbone is given (the official builds torchvision's
``resnet50(zero_init_residual=True)``; the test passes a ResNet-18 holding our weights).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn, optim


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """``main.py: off_diagonal``: the flattened off-diagonal elements of a square matrix."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class BarlowTwins(nn.Module):
    """``main.py: BarlowTwins`` (``__init__`` and ``forward``) on a given backbone with
    ``num_features`` outputs (2048 for the official ResNet-50)."""

    def __init__(self, args: Any, backbone: nn.Module, num_features: int):
        super().__init__()
        self.args = args
        self.backbone = backbone  # official: torchvision.models.resnet50(zero_init_residual=True), fc = Identity

        sizes = [num_features] + list(map(int, args.projector.split("-")))
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 2):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=False))
            layers.append(nn.BatchNorm1d(sizes[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)

        # normalization layer for the representations z1 and z2
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        z1 = self.projector(self.backbone(y1))
        z2 = self.projector(self.backbone(y2))

        # empirical cross-correlation matrix
        c = self.bn(z1).T @ self.bn(z2)

        # sum the cross-correlation matrix between all gpus (one process here: all_reduce is the identity)
        c.div_(self.args.batch_size)

        on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
        off_diag = off_diagonal(c).pow_(2).sum()
        return on_diag + self.args.lambd * off_diag


def exclude_bias_and_norm(p: torch.Tensor) -> bool:
    """``main.py: exclude_bias_and_norm``: biases and norm parameters are the 1-D parameters."""
    return p.ndim == 1


class LARS(optim.Optimizer):
    """``main.py: LARS``: weight decay, then the trust ratio ``eta ||w|| / ||dp||``, then heavy-ball
    momentum, then the lr; the filters exempt a parameter from decay and adaptation."""

    def __init__(self, params: Any, lr: float, weight_decay: float = 0, momentum: float = 0.9, eta: float = 0.001,
                 weight_decay_filter: Any = None, lars_adaptation_filter: Any = None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter, lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad

                if dp is None:
                    continue

                if g["weight_decay_filter"] is None or not g["weight_decay_filter"](p):
                    dp = dp.add(p, alpha=g["weight_decay"])

                if g["lars_adaptation_filter"] is None or not g["lars_adaptation_filter"](p):
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)

                param_state = self.state[p]
                if "mu" not in param_state:
                    param_state["mu"] = torch.zeros_like(p)
                mu = param_state["mu"]
                mu.mul_(g["momentum"]).add_(dp)

                p.add_(mu, alpha=-g["lr"])


def make_optimizer(args: Any, model: nn.Module, eta: float = 0.001) -> LARS:
    """``main.py: main_worker``'s parameter groups (weights; biases and norms) and its LARS (``eta``
    is the official default unless the test sets it)."""
    param_weights, param_biases = [], []
    for param in model.parameters():
        if param.ndim == 1:
            param_biases.append(param)
        else:
            param_weights.append(param)
    parameters = [{"params": param_weights}, {"params": param_biases}]
    return LARS(parameters, lr=0, weight_decay=args.weight_decay, eta=eta, weight_decay_filter=exclude_bias_and_norm,
                lars_adaptation_filter=exclude_bias_and_norm)


def adjust_learning_rate(args: Any, optimizer: optim.Optimizer, loader_len: float, step: int) -> float:
    """``main.py: adjust_learning_rate``; ``loader_len`` is the official ``len(loader)`` (steps per
    epoch; the test uses a fraction so that the 10 warm-up epochs end within its 3 steps)."""
    max_steps = args.epochs * loader_len
    warmup_steps = 10 * loader_len
    base_lr = args.batch_size / 256
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    optimizer.param_groups[0]["lr"] = lr * args.learning_rate_weights
    optimizer.param_groups[1]["lr"] = lr * args.learning_rate_biases
    return lr * args.learning_rate_weights


def train_step(args: Any, model: BarlowTwins, optimizer: LARS, loader_len: float, step: int,
               y1: torch.Tensor, y2: torch.Tensor) -> tuple[float, float]:
    """The body of ``main.py: main_worker``'s loop (without AMP): (loss, lr of the weights)."""
    lr = adjust_learning_rate(args, optimizer, loader_len, step)
    optimizer.zero_grad()
    loss = model.forward(y1, y2)
    loss.backward()
    optimizer.step()
    return loss.item(), lr
