"""The official DINO training step in PyTorch, written from facebookresearch/dino.

Mirrors:

* ``vision_transformer.py`` ``DINOHead``: an MLP (Linear, [BatchNorm1d], GELU; ``nlayers`` Linear
  layers to ``bottleneck_dim``), ``_init_weights`` (truncated normal std 0.02, zero biases),
  ``F.normalize(dim=-1, p=2)``, then ``nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim,
  bias=False))`` with ``weight_g`` filled with 1 and not trained when ``norm_last_layer``.
* ``utils.py``: ``MultiCropWrapper`` (crops of one size concatenated along the batch through the
  backbone, the head once over every crop), ``cosine_scheduler``, ``get_params_groups`` (biases and
  1-D parameters without weight decay), ``clip_gradients`` (each parameter's gradient clipped to
  norm ``clip`` on its own) and ``cancel_gradients_last_layer``.
* ``main_dino.py``: ``DINOLoss`` (``forward`` with the per-epoch teacher temperature schedule, and
  ``update_center``) and the body of ``train_one_epoch`` (lr and weight decay from their schedules,
  teacher on the 2 global crops, student on all, backward, clipping, last-layer cancelling,
  ``optimizer.step()``, then the momentum teacher update with ``momentum_schedule[it]``).

Single process (``world_size`` 1, so ``SyncBatchNorm`` is BatchNorm and the ``all_reduce`` in
``update_center`` is the identity), no mixed precision (``fp16_scaler`` None); runs in the dtype of
the modules it is given.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def trunc_normal_(tensor: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """``utils.trunc_normal_`` (cut at +-2, absolute): ``nn.init.trunc_normal_``'s same law."""
    return nn.init.trunc_normal_(tensor, std=std, a=-2.0, b=2.0)


class DINOHead(nn.Module):
    """``vision_transformer.py`` ``DINOHead``."""

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        with warnings.catch_warnings():  # torch.nn.utils.weight_norm is deprecated; the official uses it
            warnings.simplefilter("ignore")
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2)
        x = self.last_layer(x)
        return x


class MultiCropWrapper(nn.Module):
    """``utils.MultiCropWrapper``."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        # disable layers dedicated to ImageNet labels classification
        backbone.fc, backbone.head = nn.Identity(), nn.Identity()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        # convert to list
        if not isinstance(x, list):
            x = [x]
        idx_crops = torch.cumsum(torch.unique_consecutive(
            torch.tensor([inp.shape[-1] for inp in x]),
            return_counts=True,
        )[1], 0)
        start_idx, output = 0, torch.empty(0).to(x[0].device)
        for end_idx in idx_crops:
            _out = self.backbone(torch.cat(x[start_idx: end_idx]))
            if isinstance(_out, tuple):
                _out = _out[0]
            # accumulate outputs
            output = torch.cat((output, _out))
            start_idx = end_idx
        # Run the head forward on the concatenated features.
        return self.head(output)


class DINOLoss(nn.Module):
    """``main_dino.py`` ``DINOLoss``."""

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        # we apply a warm up for the teacher temperature because
        # a too high temperature makes the training instable at the beginning
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp,
                        teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp
        ))

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """Cross-entropy between softmax outputs of the teacher and student networks."""
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.ncrops)

        # teacher centering and sharpening
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)

        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    # we skip cases where student and teacher operate on the same view
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """Update center used for teacher output (``dist.all_reduce`` dropped: one process)."""
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        batch_center = batch_center / (len(teacher_output) * 1)
        # ema update
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0) -> np.ndarray:
    """``utils.cosine_scheduler``."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)

    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))

    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def get_params_groups(model: nn.Module) -> list[dict]:
    """``utils.get_params_groups``."""
    regularized = []
    not_regularized = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # we do not regularize biases nor Norm parameters
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{'params': regularized}, {'params': not_regularized, 'weight_decay': 0.}]


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """``utils.clip_gradients``."""
    norms = []
    for name, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """``utils.cancel_gradients_last_layer``."""
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


class DINOTrainer:
    """``main_dino.py``'s ``train_dino`` set-up (SGD over ``get_params_groups``, the schedules) and
    ``train_one_epoch``'s iteration body."""

    def __init__(self, student: MultiCropWrapper, teacher: MultiCropWrapper, dino_loss: DINOLoss,
                 lr_schedule: np.ndarray, wd_schedule: np.ndarray, momentum_schedule: np.ndarray,
                 niter_per_epoch: int, clip_grad: float = 3.0, freeze_last_layer: int = 1):
        self.student, self.teacher, self.dino_loss = student, teacher, dino_loss
        self.lr_schedule, self.wd_schedule, self.momentum_schedule = lr_schedule, wd_schedule, momentum_schedule
        self.niter_per_epoch = niter_per_epoch
        self.clip_grad = clip_grad
        self.freeze_last_layer = freeze_last_layer
        # there is no backpropagation through the teacher, so no need for gradients
        for p in teacher.parameters():
            p.requires_grad = False
        params_groups = get_params_groups(student)
        self.optimizer = torch.optim.SGD(params_groups, lr=0, momentum=0.9)  # lr is set by scheduler
        student.train()
        teacher.train()

    def train_step(self, images: list[torch.Tensor], it: int) -> float:
        """One iteration of ``train_one_epoch`` at global iteration ``it``; returns the loss."""
        epoch = it // self.niter_per_epoch
        student, teacher, optimizer = self.student, self.teacher, self.optimizer
        # update weight decay and learning rate according to their schedule
        for i, param_group in enumerate(optimizer.param_groups):
            param_group["lr"] = self.lr_schedule[it]
            if i == 0:  # only the first group is regularized
                param_group["weight_decay"] = self.wd_schedule[it]

        teacher_output = teacher(images[:2])  # only the 2 global views pass through the teacher
        student_output = student(images)
        loss = self.dino_loss(student_output, teacher_output, epoch)

        # student update
        optimizer.zero_grad()
        loss.backward()
        if self.clip_grad:
            clip_gradients(student, self.clip_grad)
        cancel_gradients_last_layer(epoch, student, self.freeze_last_layer)
        optimizer.step()

        # EMA update for the teacher
        with torch.no_grad():
            m = self.momentum_schedule[it]  # momentum parameter
            for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        return float(loss.detach())
