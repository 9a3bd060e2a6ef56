"""MoCo v2's official training step, re-implemented in PyTorch from facebookresearch/moco.

Mirrors ``moco/builder.py`` (``MoCo.__init__``, ``_momentum_update_key_encoder``,
``_dequeue_and_enqueue``, ``_batch_shuffle_ddp``, ``_batch_unshuffle_ddp``, ``forward``) and
``main_moco.py`` (``train``: ``CrossEntropyLoss`` on the logits with label 0, SGD on
``model.parameters()`` with momentum 0.9 and weight decay 1e-4, ``adjust_learning_rate`` with
``--cos`` at the start of each epoch); the ``--mlp`` head replaces ``fc`` by
``Linear(d, d) + ReLU + Linear(d, dim)``, both with biases.

The official code runs under DDP on N GPUs without SyncBN. Here the N GPUs are emulated in one
process, faithfully: every "GPU" runs the query encoder on its own slice of the batch (BN
statistics of that slice), the key encoder on its slice of the globally shuffled batch, unshuffles
its keys, computes its own loss (mean over its queries) and enqueues the all-gathered keys in GPU
order. Two things a single process must do explicitly:

* Gradients: DDP averages the GPUs' gradients, i.e. the gradient of the mean over GPUs of their
  losses, which is what ``loss.backward()`` on that mean computes here.
* BN buffers: DDP (``broadcast_buffers=True``) copies rank 0's running statistics to every GPU at
  the next forward; ours keeps the mean over the groups of each group's running-statistics update.
  This emulation does the latter (averages the GPUs' buffers after each encoder pass): a documented
  difference of ours, not of the step's other logic.

The shuffle permutation is an input (``idx_shuffle``): the official draws it with
``torch.randperm`` on rank 0 and broadcasts it; the test gives the one our RNG drew.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class EncoderWithHead(nn.Module):
    """``base_encoder(num_classes=dim)`` with the ``--mlp`` head as its ``fc``."""

    def __init__(self, encoder: nn.Module, fc: nn.Module):
        super().__init__()
        self.encoder = encoder  # pooled features (the backbone without its fc)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


def mlp_head(hidden: nn.Linear, last: nn.Linear) -> nn.Sequential:
    """``MoCo.__init__``'s ``--mlp`` hack: ``nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), fc)``."""
    return nn.Sequential(hidden, nn.ReLU(), last)


def _float_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.named_buffers() if v.is_floating_point()}


def _set_buffers(module: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Points the buffers at new tensors (an in-place copy would change tensors that autograd saved
    for an earlier GPU's backward)."""
    for name, value in values.items():
        owner, _, leaf = name.rpartition(".")
        module.get_submodule(owner)._buffers[leaf] = value.clone()


def forward_per_gpu(module: nn.Module, chunks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``module`` on each GPU's chunk, every GPU starting from the same BN buffers (DDP keeps them
    in sync); afterwards the buffers are the mean of the GPUs' updated buffers (ours; DDP would
    broadcast rank 0's at the next forward)."""
    start = {k: v.detach().clone() for k, v in _float_buffers(module).items()}
    outs, ends = [], []
    for chunk in chunks:
        _set_buffers(module, start)
        outs.append(module(chunk))
        ends.append({k: v.detach().clone() for k, v in _float_buffers(module).items()})
    _set_buffers(module, {k: torch.stack([e[k] for e in ends]).mean(0) for k in start})
    return outs


class MoCo(nn.Module):
    """``moco/builder.py`` ``MoCo`` on ``n_gpus`` emulated DDP ranks (the per-GPU batch is
    ``global_batch / n_gpus``)."""

    def __init__(self, encoder_q: nn.Module, queue: torch.Tensor, m: float = 0.999, T: float = 0.2, n_gpus: int = 1):
        super().__init__()
        self.K = queue.shape[1]
        self.m = m
        self.T = T
        self.n_gpus = n_gpus
        self.encoder_q = encoder_q
        # Official: a second ``base_encoder`` whose parameters are copied from the query encoder
        # (its buffers are a fresh encoder's, i.e. the same initial running statistics).
        self.encoder_k = copy.deepcopy(encoder_q)
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)  # initialize
            param_k.requires_grad = False  # not update by gradient
        # Official: ``normalize(randn(dim, K), dim=0)``; given here (our RNG drew it), (dim, K).
        self.register_buffer("queue", F.normalize(queue.clone(), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        """Momentum update of the key encoder (parameters only, not the BN buffers)."""
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys_per_gpu: Sequence[torch.Tensor]) -> None:
        """``_dequeue_and_enqueue``: every GPU gathers all GPUs' keys and writes them at the pointer."""
        keys = torch.cat(list(keys_per_gpu), dim=0)  # concat_all_gather: the GPUs' keys in rank order
        batch_size = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % batch_size == 0  # for simplicity
        self.queue[:, ptr:ptr + batch_size] = keys.T  # replace the keys at ptr (dequeue and enqueue)
        ptr = (ptr + batch_size) % self.K  # move pointer
        self.queue_ptr[0] = ptr

    @torch.no_grad()
    def _batch_shuffle_ddp(self, x_gather: torch.Tensor, idx_shuffle: torch.Tensor
                           ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every GPU's share of the shuffled global batch (``x_gather`` is ``concat_all_gather``
        of the GPUs' ``im_k``), and the index to restore the order."""
        idx_unshuffle = torch.argsort(idx_shuffle)
        idx_per_gpu = idx_shuffle.view(self.n_gpus, -1)
        return [x_gather[idx_per_gpu[gpu_idx]] for gpu_idx in range(self.n_gpus)], idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle_ddp(self, x_per_gpu: Sequence[torch.Tensor], idx_unshuffle: torch.Tensor
                             ) -> list[torch.Tensor]:
        x_gather = torch.cat(list(x_per_gpu), dim=0)
        idx_per_gpu = idx_unshuffle.view(self.n_gpus, -1)
        return [x_gather[idx_per_gpu[gpu_idx]] for gpu_idx in range(self.n_gpus)]

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, idx_shuffle: torch.Tensor
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``MoCo.forward`` on every GPU: ``(logits, labels)`` per GPU. ``im_q``/``im_k`` are the
        global batch; GPU ``g`` holds its ``g``-th consecutive slice (the DistributedSampler's
        batches, concatenated in rank order)."""
        # compute query features
        q = [F.normalize(out, dim=1) for out in forward_per_gpu(self.encoder_q, im_q.chunk(self.n_gpus))]
        # compute key features
        with torch.no_grad():  # no gradient to keys
            self._momentum_update_key_encoder()  # update the key encoder
            # shuffle for making use of BN
            im_k_per_gpu, idx_unshuffle = self._batch_shuffle_ddp(im_k, idx_shuffle)
            k = [F.normalize(out, dim=1) for out in forward_per_gpu(self.encoder_k, im_k_per_gpu)]
            # undo shuffle
            k = self._batch_unshuffle_ddp(k, idx_unshuffle)
        outputs = []
        queue = self.queue.clone().detach()
        for q_g, k_g in zip(q, k):
            # positive logits: Nx1
            l_pos = torch.einsum("nc,nc->n", [q_g, k_g]).unsqueeze(-1)
            # negative logits: NxK
            l_neg = torch.einsum("nc,ck->nk", [q_g, queue])
            logits = torch.cat([l_pos, l_neg], dim=1) / self.T  # logits: Nx(1+K), apply temperature
            labels = torch.zeros(logits.shape[0], dtype=torch.long)  # labels: positive key indicators
            outputs.append((logits, labels))
        # dequeue and enqueue
        self._dequeue_and_enqueue(k)
        return outputs


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: int, lr: float, epochs: int, cos: bool = True
                         ) -> float:
    """``main_moco.py`` ``adjust_learning_rate`` (``--cos``), at the start of each epoch."""
    if cos:  # cosine lr schedule
        lr *= 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    return lr


def make_optimizer(model: MoCo, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.SGD:
    """``main_moco.py``: ``SGD(model.parameters(), lr, momentum, weight_decay)`` (the key encoder's
    parameters never get a gradient, so SGD skips them)."""
    return torch.optim.SGD(model.parameters(), lr, momentum=momentum, weight_decay=weight_decay)


def train_step(model: MoCo, optimizer: torch.optim.Optimizer, im_q: torch.Tensor, im_k: torch.Tensor,
               idx_shuffle: torch.Tensor) -> float:
    """One iteration of ``main_moco.py`` ``train``; returns the loss averaged over the GPUs (each
    GPU's ``CrossEntropyLoss`` is the mean over its own queries)."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    outputs = model(im_q=im_q, im_k=im_k, idx_shuffle=idx_shuffle)
    losses = [criterion(output, target) for output, target in outputs]
    # DDP all-reduces (averages) the GPUs' gradients: the gradient of the mean of their losses.
    loss = torch.stack(losses).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()
