"""The official SwAV training step in PyTorch, written from facebookresearch/swav.

Mirrors:

* ``src/resnet50.py``: ``ResNet.forward`` (crops of one size concatenated along the batch through
  the backbone, ``torch.unique_consecutive`` on the crop sizes; the outputs concatenated crop-major)
  and ``ResNet.forward_head`` (``projection_head`` Linear -> BatchNorm1d -> ReLU -> Linear,
  ``F.normalize(dim=1, p=2)``, then the bias-free ``prototypes`` Linear).
* ``main_swav.py``: ``distributed_sinkhorn`` (epsilon 0.05, 3 iterations; one process, so the
  ``all_reduce`` calls are the identity) and the body of ``train`` (prototype normalisation at the
  start of each iteration, the queue logic with ``use_the_queue`` and the shift
  ``queue[i, bs:] = queue[i, :-bs].clone(); queue[i, :bs] = embedding[...]``, the swapped
  prediction at temperature 0.1, the prototypes' gradients set to None during the first
  ``freeze_prototypes_niters`` iterations) and, in ``main``, the queue's creation at the start of
  epoch ``epoch_queue_starts``.
* The optimizer is plain ``torch.optim.SGD(momentum=0.9, weight_decay=wd)`` on every parameter, as
  the SSL4EO review's ``src/bigearthnet_B12_swav_train.py`` (LARC commented out there); the learning
  rate is given per iteration (``lr_schedule[iteration]``, as ``train``); that script's per-epoch
  cosine (``adjust_learning_rate`` with ``--cos``) is ``ssl4eo_cosine_lr``.

Single process (``world_size`` 1), no mixed precision; runs in the model's dtype.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SwAVResNet(nn.Module):
    """``src/resnet50.py`` ``ResNet`` reduced to what the training step uses: ``forward_backbone``
    (the pooled, flattened trunk), ``projection_head``, ``l2norm`` and ``prototypes``."""

    def __init__(self, backbone: nn.Module, projection_head: nn.Module, prototypes: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.projection_head = projection_head
        self.l2norm = True
        self.prototypes = prototypes

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # conv1 ... layer4, avgpool, flatten

    def forward_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """``ResNet.forward_head``."""
        if self.projection_head is not None:
            x = self.projection_head(x)
        if self.l2norm:
            x = nn.functional.normalize(x, dim=1, p=2)
        if self.prototypes is not None:
            return x, self.prototypes(x)
        return x

    def forward(self, inputs: Sequence[torch.Tensor] | torch.Tensor):
        """``ResNet.forward``: the multi-crop forward."""
        if not isinstance(inputs, list):
            inputs = [inputs]
        idx_crops = torch.cumsum(torch.unique_consecutive(
            torch.tensor([inp.shape[-1] for inp in inputs]),
            return_counts=True,
        )[1], 0)
        start_idx = 0
        for end_idx in idx_crops:
            _out = self.forward_backbone(torch.cat(inputs[start_idx: end_idx]))
            if start_idx == 0:
                output = _out
            else:
                output = torch.cat((output, _out))
            start_idx = end_idx
        return self.forward_head(output)


def projection_head(in_dim: int, hidden_mlp: int, output_dim: int) -> nn.Sequential:
    """``ResNet.__init__``'s ``projection_head`` when ``hidden_mlp > 0``."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_mlp),
        nn.BatchNorm1d(hidden_mlp),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_mlp, output_dim),
    )


@torch.no_grad()
def distributed_sinkhorn(out: torch.Tensor, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                         world_size: int = 1) -> torch.Tensor:
    """``main_swav.py`` ``distributed_sinkhorn`` (the ``dist.all_reduce`` calls dropped: one process)."""
    Q = torch.exp(out / epsilon).t()  # Q is K-by-B for consistency with notations from our paper
    B = Q.shape[1] * world_size  # number of samples to assign
    K = Q.shape[0]  # how many prototypes

    # make the matrix sums to 1
    sum_Q = torch.sum(Q)
    Q /= sum_Q

    for _ in range(sinkhorn_iterations):
        # normalize each row: total weight per prototype must be 1/K
        sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
        Q /= sum_of_rows
        Q /= K

        # normalize each column: total weight per sample must be 1/B
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B

    Q *= B  # the colomns must sum to 1 so that Q is an assignment
    return Q.t()


def ssl4eo_cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """``src/bigearthnet_B12_swav_train.py`` ``adjust_learning_rate`` with ``--cos``."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


class SwAVTrainer:
    """``main_swav.py``'s ``main`` loop state (the queue) and ``train``'s iteration body."""

    def __init__(self, model: SwAVResNet, lr_schedule: Callable[[int], float], *, weight_decay: float,
                 momentum: float = 0.9, nmb_crops: Sequence[int] = (2,), crops_for_assign: Sequence[int] = (0, 1),
                 temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 queue_length: int = 0, epoch_queue_starts: int = 15, freeze_prototypes_niters: int = 313,
                 feat_dim: int = 128, niter_per_epoch: int = 1, world_size: int = 1):
        self.model = model
        self.lr_schedule = lr_schedule
        self.nmb_crops = list(nmb_crops)
        self.crops_for_assign = list(crops_for_assign)
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.queue_length = queue_length
        self.epoch_queue_starts = epoch_queue_starts
        self.freeze_prototypes_niters = freeze_prototypes_niters
        self.feat_dim = feat_dim
        self.niter_per_epoch = niter_per_epoch
        self.world_size = world_size
        # SSL4EO's SwAV script: plain SGD on every parameter (LARC is commented out there).
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr_schedule(0), momentum=momentum,
                                         weight_decay=weight_decay)
        self.queue: torch.Tensor | None = None
        self.use_the_queue = False

    def start_epoch(self, epoch: int) -> None:
        """``main``'s per-epoch queue creation, and ``train``'s ``use_the_queue = False``."""
        if self.queue_length > 0 and epoch >= self.epoch_queue_starts and self.queue is None:
            self.queue = torch.zeros(
                len(self.crops_for_assign),
                self.queue_length // self.world_size,
                self.feat_dim,
                dtype=self.model.prototypes.weight.dtype,  # the official's is float32, as its model
            )
        self.model.train()
        self.use_the_queue = False

    def train_step(self, inputs: list[torch.Tensor], iteration: int) -> float:
        """One iteration of ``train`` at global ``iteration``; returns the loss."""
        epoch, it = divmod(iteration, self.niter_per_epoch)
        if it == 0:
            self.start_epoch(epoch)
        model, optimizer = self.model, self.optimizer

        # update learning rate
        for param_group in optimizer.param_groups:
            param_group["lr"] = self.lr_schedule(iteration)

        # normalize the prototypes
        with torch.no_grad():
            w = model.prototypes.weight.data.clone()
            w = nn.functional.normalize(w, dim=1, p=2)
            model.prototypes.weight.copy_(w)

        # ============ multi-res forward passes ... ============
        embedding, output = model(inputs)
        embedding = embedding.detach()
        bs = inputs[0].size(0)

        # ============ swav loss ... ============
        loss = 0
        queue = self.queue
        for i, crop_id in enumerate(self.crops_for_assign):
            with torch.no_grad():
                out = output[bs * crop_id: bs * (crop_id + 1)].detach()

                # time to use the queue
                if queue is not None:
                    if self.use_the_queue or not torch.all(queue[i, -1, :] == 0):
                        self.use_the_queue = True
                        out = torch.cat((torch.mm(
                            queue[i],
                            model.prototypes.weight.t()
                        ), out))
                    # fill the queue
                    queue[i, bs:] = queue[i, :-bs].clone()
                    queue[i, :bs] = embedding[crop_id * bs: (crop_id + 1) * bs]

                # get assignments
                q = distributed_sinkhorn(out, self.epsilon, self.sinkhorn_iterations, self.world_size)[-bs:]

            # cluster assignment prediction
            subloss = 0
            for v in np.delete(np.arange(np.sum(self.nmb_crops)), crop_id):
                x = output[bs * v: bs * (v + 1)] / self.temperature
                subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
            loss += subloss / (np.sum(self.nmb_crops) - 1)
        loss /= len(self.crops_for_assign)

        # ============ backward and optim step ... ============
        optimizer.zero_grad()
        loss.backward()
        # cancel gradients for the prototypes
        if iteration < self.freeze_prototypes_niters:
            for name, p in model.named_parameters():
                if "prototypes" in name:
                    p.grad = None
        optimizer.step()
        return float(loss.detach())
