"""One training step of BYOL as the official code takes it, re-written in PyTorch.

The official code is JAX/Haiku (google-deepmind/deepmind-research ``byol/``); this mirrors its logic:

* ``utils/networks.py: MLP``: Linear with bias, BatchNorm, ReLU, Linear *without* bias (projector
  and predictor); ``byol_experiment.py: ByolExperiment._forward``: encoder -> projector ->
  predictor, each view applied on its own (``apply_once_fn`` for view 1, then view 2).
* ``byol_experiment.py: ByolExperiment.loss_fn``: online and target networks both in training mode
  on both views; ``helpers.regression_loss(prediction_view1, sg(target projection_view2)) +
  regression_loss(prediction_view2, sg(projection_view1))``, mean over the batch.
* ``byol_experiment.py: ByolExperiment._update_fn``: gradients of the online parameters, LARS update
  with ``schedules.learning_schedule(global_step)``, then the target update
  ``target + (1 - tau) (online - target)`` with ``tau = schedules.target_ema(global_step)``, from the
  online parameters *after* the optimizer step.
* ``utils/optimizers.py: lars``: ``chain(add_weight_decay, scale_by_lars, scale(-lr))`` with
  ``exclude_bias_and_norm`` (no decay and no trust ratio for biases and normalisation parameters).

Set-up differences (none changes the SSL update): one process (the official pmean of gradients and
cross-replica BN are then identities); float32; the online linear classifier on the stop-gradient
embedding (an evaluation aid whose loss cannot reach the SSL parameters) is left out; the target is
initialised as a copy of the online network (the official draws it from another RNG key, noting that
it makes no difference; the test starts both from our state, whose target is a copy); BatchNorm is
PyTorch's (the official's Haiku BatchNorm normalises the same way in training, but its running
statistics are a zero-debiased EMA of the biased variance; they are not used in training).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class MLP(nn.Module):
    """``utils/networks.py: MLP``: one hidden layer with BatchNorm (decay 0.9, eps 1e-5)."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_size, hidden_size, bias=True),
                                 nn.BatchNorm1d(hidden_size, eps=1e-5, momentum=0.1),  # Haiku decay_rate 0.9
                                 nn.ReLU(),
                                 nn.Linear(hidden_size, output_size, bias=False))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)


class BYOLNetwork(nn.Module):
    """``byol_experiment.py: ByolExperiment._forward`` (without the classifier) on a given encoder."""

    def __init__(self, encoder: nn.Module, embedding_size: int, projector_hidden_size: int,
                 projector_output_size: int, predictor_hidden_size: int):
        super().__init__()
        self.encoder = encoder
        self.projector = MLP(embedding_size, projector_hidden_size, projector_output_size)
        self.predictor = MLP(projector_output_size, predictor_hidden_size, projector_output_size)

    def apply_once_fn(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.encoder(images)
        proj_out = self.projector(embedding)
        pred_out = self.predictor(proj_out)
        return {"projection": proj_out, "prediction": pred_out}

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        out1 = self.apply_once_fn(view1)
        out2 = self.apply_once_fn(view2)
        return {**{k + "_view1": v for k, v in out1.items()}, **{k + "_view2": v for k, v in out2.items()}}


def l2_normalize(x: torch.Tensor, axis: int = -1, epsilon: float = 1e-12) -> torch.Tensor:
    """``utils/helpers.py: l2_normalize``: ``x * rsqrt(max(sum(x^2), epsilon))``."""
    square_sum = torch.sum(torch.square(x), dim=axis, keepdim=True)
    return x * torch.rsqrt(torch.clamp(square_sum, min=epsilon))


def regression_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``utils/helpers.py: regression_loss``: squared distance of the L2-normalised vectors."""
    normed_x, normed_y = l2_normalize(x, axis=-1), l2_normalize(y, axis=-1)
    return torch.sum((normed_x - normed_y) ** 2, dim=-1)


def _cosine_decay(global_step: float, max_steps: int, initial_value: float) -> float:
    """``utils/schedules.py: _cosine_decay``."""
    global_step = min(global_step, max_steps)
    return initial_value * 0.5 * (1 + math.cos(math.pi * global_step / max_steps))


def target_ema(global_step: int, base_ema: float, max_steps: int) -> float:
    """``utils/schedules.py: target_ema``: ``1 - (1 - base_ema) * cosine_decay``."""
    decay = _cosine_decay(global_step, max_steps, 1.0)
    return 1.0 - (1.0 - base_ema) * decay


def learning_schedule(global_step: int, batch_size: int, base_learning_rate: float, total_steps: int,
                      warmup_steps: int) -> float:
    """``utils/schedules.py: learning_schedule``: linear warm-up from 0, then cosine to 0."""
    scaled_lr = base_learning_rate * batch_size / 256.0
    learning_rate = global_step / int(warmup_steps) * scaled_lr if warmup_steps > 0 else scaled_lr
    if global_step < warmup_steps:
        return learning_rate
    return _cosine_decay(global_step - warmup_steps, total_steps - warmup_steps, scaled_lr)


def exclude_bias_and_norm(module: nn.Module, name: str) -> bool:
    """``utils/optimizers.py: exclude_bias_and_norm``: False for biases (Haiku's ``b``) and the
    parameters of normalisation modules, True for everything else."""
    if name == "bias" or isinstance(module, nn.modules.batchnorm._BatchNorm):
        return False
    return True


class LARS:
    """``utils/optimizers.py: lars``: ``add_weight_decay(weight_decay, filter)``, then
    ``scale_by_lars(momentum, eta, filter)`` (trust ratio ``eta ||w|| / ||u||`` of the decayed
    update, then ``mu = momentum * mu + u``), then ``scale(-learning_rate)``."""

    def __init__(self, net: nn.Module, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001,
                 filter_fn: Any = exclude_bias_and_norm):
        self.params = [(p, bool(filter_fn(module, name))) for module in net.modules()
                       for name, p in module.named_parameters(recurse=False)]
        self.weight_decay, self.momentum, self.eta = weight_decay, momentum, eta
        self.mu = [torch.zeros_like(p) for p, _ in self.params]  # ScaleByLarsState

    @torch.no_grad()
    def update(self, learning_rate: float) -> None:
        for i, (p, apply) in enumerate(self.params):
            u = p.grad
            if apply:  # add_weight_decay
                u = u + self.weight_decay * p
            if apply:  # scale_by_lars: lars_adaptation
                param_norm = torch.linalg.norm(p)
                update_norm = torch.linalg.norm(u)
                one = torch.ones_like(param_norm)
                u = u * torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, self.eta * param_norm / update_norm, one), one)
            self.mu[i] = self.momentum * self.mu[i] + u
            p.add_(-learning_rate * self.mu[i])  # scale(-learning_rate), optax.apply_updates


def make_target(online: BYOLNetwork) -> BYOLNetwork:
    """The target network: the official's second ``forward.init`` (a copy here, see the module doc)."""
    return copy.deepcopy(online)


def update_fn(online: BYOLNetwork, target: BYOLNetwork, optimizer: LARS, global_step: int, view1: torch.Tensor,
              view2: torch.Tensor, batch_size: int, base_learning_rate: float, max_steps: int, warmup_steps: int,
              base_target_ema: float) -> tuple[float, float, float]:
    """``byol_experiment.py: ByolExperiment._update_fn`` with ``loss_fn``: (loss, lr, tau)."""
    online_network_out = online(view1, view2)
    with torch.no_grad():  # the official differentiates with respect to the online parameters only
        target_network_out = target(view1, view2)  # is_training=True: the target's BN statistics move too
    repr_loss = regression_loss(online_network_out["prediction_view1"],
                                target_network_out["projection_view2"].detach())
    repr_loss = repr_loss + regression_loss(online_network_out["prediction_view2"],
                                            target_network_out["projection_view1"].detach())
    repr_loss = torch.mean(repr_loss)

    for p in online.parameters():
        p.grad = None
    repr_loss.backward()

    learning_rate = learning_schedule(global_step, batch_size=batch_size, base_learning_rate=base_learning_rate,
                                      total_steps=max_steps, warmup_steps=warmup_steps)
    optimizer.update(learning_rate)

    tau = target_ema(global_step, base_ema=base_target_ema, max_steps=max_steps)
    with torch.no_grad():
        for x, y in zip(target.parameters(), online.parameters()):
            x.add_((1 - tau) * (y - x))
    return repr_loss.item(), learning_rate, tau
