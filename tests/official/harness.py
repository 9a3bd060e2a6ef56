"""Shared pieces of the step-equivalence tests: our side (JAX) and weight transfer to PyTorch.

Our side runs ``ssl4eo_jax.train.update_step`` (the train step minus the augmentation) from the
initial state of a method's config on fixed views, so the PyTorch side can be fed the same views
and the same initial weights.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any

import jax
import numpy as np
import torch

from ssl4eo_jax import sharding, train
from ssl4eo_jax.bench.torch_resnet import ResNet as TorchResNet
from ssl4eo_jax.interop.resnet_weights import encoder_to_state_dict
from ssl4eo_jax.methods import TrainLength, get_method
from ssl4eo_jax.optim import make_optimizer
from ssl4eo_jax.presets import pretrain as common
from ssl4eo_jax.presets.files import load_config_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Sizes of the step-equivalence runs: float32 on the CPU, tiny but every layer of a ResNet-18.
BATCH, SIZE, BANDS, WIDTH = 16, 32, 13, 8
# Where a test also runs the official step in float32, each tensor of ours may differ from the
# float64 official result by up to this many times the official float32 run's own largest error on
# that tensor (``official_noise``), when that is more than the test's fixed tolerance.
NOISE_FACTOR = 2.0


def method_config(name: str, **overrides: Any):
    """``configs/<name>.py:demo`` at test size (float32, ResNet-18 of width ``WIDTH``)."""
    config = load_config_module(name).get_config("demo")
    config.data.global_batch = BATCH
    config.aug.crop_size = SIZE
    config.model.width = WIDTH
    config.model.dtype = "float32"
    common.apply_overrides(config, overrides)
    return config


def fixed_views(n_steps: int, n_views: int = 2, seed: int = 0, sizes: tuple[int, ...] | None = None
                ) -> list[list[np.ndarray]]:
    """``n_steps`` lists of ``n_views`` normalised NHWC float32 views (standard normal)."""
    rng = np.random.default_rng(seed)
    sizes = sizes or (SIZE,) * n_views
    return [[rng.standard_normal((BATCH, s, s, BANDS)).astype(np.float32) for s in sizes] for _ in range(n_steps)]


def run_jax(config: Any, views: list[list[np.ndarray]], steps_per_epoch: float = 1.0, total_steps: int = 100,
            n_devices: int = 1) -> tuple[Any, list[Any], list[dict[str, float]]]:
    """Our method on ``views``: (initial state, states after each step, metrics), as numpy.

    It runs in a child process compiled at XLA's default optimisation level, as users' runs are:
    the test session compiles without LLVM's optimisations for speed (tests/conftest.py), and at
    that level XLA:CPU's numerics on an AVX-512 Xeon put DINO's step 10 % of a BN shift's scale
    away from the exact official step, far outside round-off. The child shares the session's
    persistent compilation cache.
    """
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_backend_optimization_level" not in f)
    with tempfile.TemporaryDirectory() as tmp:
        request, result = os.path.join(tmp, "request.pkl"), os.path.join(tmp, "result.pkl")
        with open(request, "wb") as f:
            pickle.dump((config, views, steps_per_epoch, total_steps, n_devices), f)
        proc = subprocess.run([sys.executable, "-m", "tests.official.harness", request, result], cwd=ROOT,
                              env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        with open(result, "rb") as f:
            return pickle.load(f)


def _run_jax_here(config: Any, views: list[list[np.ndarray]], steps_per_epoch: float, total_steps: int,
                  n_devices: int) -> tuple[Any, list[Any], list[dict[str, float]]]:
    """``run_jax`` in this process."""
    mesh = sharding.make_mesh(jax.devices()[:n_devices])
    method = get_method(config, TrainLength(steps_per_epoch, total_steps), mesh)
    tx, lr_fn = make_optimizer(config.optim, steps_per_epoch, total_steps, method.param_groups())
    state = train.init_state(method, tx, config, BANDS, mesh)
    initial = jax.device_get(state)
    step = jax.jit(lambda s, v: train.update_step(method, tx, lr_fn, s, v, config.seed),
                   in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                   out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)))
    states, metrics = [], []
    for step_views in views:  # sharded along the batch over the mesh's devices, as in training
        state, m = step(state, [np.asarray(v) for v in step_views])
        states.append(jax.device_get(state))
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    return initial, states, metrics


def torch_encoder(encoder_vars: dict[str, Any], zero_init_residual: bool = False) -> TorchResNet:
    """A PyTorch ResNet-18 (torchvision layout, width ``WIDTH``) holding our encoder's weights."""
    model = TorchResNet("resnet18", BANDS, num_classes=1, width=WIDTH)
    model.fc = torch.nn.Identity()
    state = {k: torch.from_numpy(np.array(v)) for k, v in encoder_to_state_dict(encoder_vars).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    model.forward = model.features  # pooled features, as our encoder returns
    return model


def torch_linear(kernel: np.ndarray, bias: np.ndarray | None = None) -> torch.nn.Linear:
    """``nn.Linear`` with our Dense ``kernel`` (in, out) and ``bias``."""
    layer = torch.nn.Linear(kernel.shape[0], kernel.shape[1], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.array(kernel).T))
        if bias is not None:
            layer.bias.copy_(torch.from_numpy(np.array(bias)))
    return layer


def torch_bn(scale: np.ndarray | None, bias: np.ndarray | None, num: int) -> torch.nn.BatchNorm1d:
    """``nn.BatchNorm1d`` with our BN's affine parameters (``affine=False`` when both are None)."""
    bn = torch.nn.BatchNorm1d(num, affine=scale is not None)
    if scale is not None:
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(np.array(scale)))
            bn.bias.copy_(torch.from_numpy(np.array(bias)) if bias is not None else torch.zeros(num))
    return bn


def encoder_state_dict(state: Any) -> dict[str, np.ndarray]:
    """Our state's encoder as a torchvision state_dict (parameters and BN statistics)."""
    return encoder_to_state_dict({"params": state["params"]["encoder"], "batch_stats": state["batch_stats"]["encoder"]})


def as_numpy(value: Any) -> np.ndarray:
    """A torch tensor or array as a float64 (or integer) numpy array."""
    value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return value.astype(np.float64) if np.issubdtype(value.dtype, np.floating) else value


def official_noise(exact: dict[str, Any], float32: dict[str, Any]) -> dict[str, float]:
    """Per tensor, ``NOISE_FACTOR`` x the largest difference between the official step run in float32
    and in float64: the round-off that the official code itself has on this machine.

    Float32 results of a training step differ from the exact ones by round-off that the step
    amplifies (BN over small groups, Sinkhorn's exp(s / 0.05), sums that nearly cancel), and by how
    much depends on the CPU's kernels: a fixed tolerance that one machine meets with room can fail
    on another. Ours is held to the exact (float64) official result within this bound where it is
    larger than the test's fixed tolerance, i.e. to no worse than twice the official code's own
    float32 round-off, measured in the same process.
    """
    return {key: NOISE_FACTOR * float(np.max(np.abs(as_numpy(float32[key]) - as_numpy(value)), initial=0.0))
            for key, value in exact.items()}


def assert_close(ours: dict[str, np.ndarray], theirs: dict[str, Any], rtol: float = 1e-4, atol: float = 1e-6,
                 what: str = "", noise: dict[str, float] | None = None) -> None:
    """Every key of ``theirs`` (torch tensors or arrays) matches ``ours`` to ``rtol`` (and a small
    ``atol`` for values that are ~0), or, where ``noise`` (``official_noise``) gives a larger
    absolute bound for the key, to that bound."""
    assert set(ours) >= set(theirs), sorted(set(theirs) - set(ours))
    for key, value in theirs.items():
        key_atol = max(atol, (noise or {}).get(key, 0.0))
        np.testing.assert_allclose(np.asarray(ours[key]), as_numpy(value), rtol=rtol, atol=key_atol,
                                   err_msg=f"{what}{key}")


if __name__ == "__main__":  # run_jax's child: python -m tests.official.harness REQUEST RESULT
    with open(sys.argv[1], "rb") as f:
        _request = pickle.load(f)
    _result = _run_jax_here(*_request)
    with open(sys.argv[2], "wb") as f:
        pickle.dump(_result, f)
