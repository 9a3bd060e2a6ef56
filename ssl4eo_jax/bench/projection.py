"""The review's compute budget on paper: XLA's FLOP count of every pre-training's compiled step times
its number of steps, plus the evaluations, projected to hours on one accelerator at a given MFU.

Nothing is trained or compiled: each step is only lowered (``jit(...).lower(...).cost_analysis()``,
seconds per method on a CPU), with the native convolutions of an accelerator (not the CPU's im2col
path for tiny maps, ``models/conv.py``), so the projection runs anywhere and counts what a GPU runs. Split sizes come from the converted
datasets' manifests when ``config.data.dirs.<name>`` points at them, else from the archives'
published counts (``REFERENCE_SPLITS``, docs: ``../shared/DATA_FORMATS.md``).

Evaluations: kNN is one encoder forward pass over the train and test splits; the reference linear
probe (the review's ``*_LC.py``) runs the frozen encoder forward on every image of every epoch, and
our own linear protocol forward once; fine-tuning (and the supervised baseline) costs three forward
passes per image per epoch (forward + backward, the usual 1 : 2 ratio). Each cell's encoder is its
own (``Cell.model``: a ResNet or a ViT), as its pre-training step's is its method's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssl4eo_jax.bench.step_bench import xla_flops
from ssl4eo_jax.errors import ConfigError

# (train, val, test) images and the patch (H, W, bands) as the converters write them.
REFERENCE_SPLITS = {
    "bigearthnet": ((269_695, 123_723, 125_866), (120, 120, 12)),  # v1.0 official lists (before snow/cloud)
    "so2sat": ((352_366, 24_119, 24_188), (32, 32, 10)),  # LCZ42 v2 training / validation / testing
    "sen12ms": ((162_555, 18_106, 18_106), (128, 128, 13)),  # train list (one tile per patch), hold-out scenes
    "eurosat": ((16_200, 5_400, 5_400), (64, 64, 13)),  # 60 / 20 / 20 % of 27,000
}

# Peak dense bf16 TFLOP/s of the targets in the table (per chip; a v5e-8 slice is 8 chips).
TARGETS = {"H100 SXM": 989.0, "TPU v5e-8": 8 * 197.0}
MFUS = (0.30, 0.45, 0.60)


@dataclasses.dataclass
class Line:
    """One pre-training or evaluation of the grid and its cost."""

    what: str
    steps: int
    flops_per_step: float

    @property
    def pflop(self) -> float:
        return self.steps * self.flops_per_step / 1e15


def split_sizes(config: Any, name: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(train, val, test) sizes and patch shape of a dataset: its manifest if given, else the reference."""
    directory = config.data.dirs.get(name) if name in config.data.dirs else None
    if directory and os.path.isfile(os.path.join(directory, "manifest.json")):
        from ssl4eo_jax.data.manifest import load_manifest

        manifest = load_manifest(directory)
        sizes = tuple(manifest.split_size(s) if s in manifest.splits else 0 for s in ("train", "val", "test"))
        return sizes, tuple(manifest.shape[-3:])
    if name.startswith("demo"):  # the synthetic stand-ins, at the preset's sizes (ssl4eo_jax.data.demo)
        from ssl4eo_jax.data.demo import DEFAULT_SIZES, VARIANTS

        sizes = tuple(int(config.data.get(f"demo_{s}", DEFAULT_SIZES[s])) for s in ("train", "val", "test"))
        size = int(config.data.get("demo_size", 48))
        return sizes, (size, size, len(VARIANTS[name][0]))
    if name not in REFERENCE_SPLITS:
        raise ConfigError(f"no reference split sizes for dataset {name!r}; pass --config.data.dirs.{name}=<converted "
                          "dir> so that its manifest gives them.")
    return REFERENCE_SPLITS[name]


def _abstract_batch(batch: int, shape: tuple[int, int, int], num_classes: int = 19) -> dict[str, Any]:
    return {"image": jax.ShapeDtypeStruct((batch, *shape), jnp.uint16),
            "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
            "multi_hot": jax.ShapeDtypeStruct((batch, num_classes), jnp.float32),
            "index": jax.ShapeDtypeStruct((batch,), jnp.int32)}


def _flops(lower: Any, *args: Any) -> float:
    """XLA's FLOPs of ``lower(*args)`` traced with the accelerators' native convolutions."""
    from ssl4eo_jax.models.conv import native_convolutions

    with native_convolutions():
        return xla_flops(lower(*args))


def pretrain_step_flops(cfg: Any, shape: tuple[int, int, int], dtype: str) -> float:
    """XLA's FLOPs of one pre-training step (augmentation included) at the config's global batch."""
    from ssl4eo_jax import sharding, train
    from ssl4eo_jax.methods import TrainLength, get_method
    from ssl4eo_jax.optim import make_optimizer

    cfg = cfg.copy_and_resolve_references()
    cfg.model.dtype = dtype
    mesh = sharding.make_mesh(jax.devices()[:1])
    method = get_method(cfg, TrainLength(1000.0, 100_000), mesh)
    tx, lr_fn = make_optimizer(cfg.optim, 1000.0, 100_000, method.param_groups())
    bands = shape[-1]
    stats = np.ones((bands,), np.float32)
    state = jax.eval_shape(lambda: train.init_state(method, tx, cfg, bands, mesh))
    step = train.make_train_step(method, tx, lr_fn, cfg, stats, stats, mesh)
    return _flops(step.lower, state, _abstract_batch(cfg.data.global_batch, shape))


def encoder_forward_flops(model_cfg: Any, size: int, bands: int, dtype: str, batch: int = 64) -> float:
    """XLA's FLOPs of the encoder's forward pass, per image, at ``size`` px."""
    from ssl4eo_jax.methods.base import build_encoder

    model_cfg = model_cfg.copy_and_resolve_references()
    model_cfg.dtype = dtype
    encoder = build_encoder(model_cfg)
    x = jax.ShapeDtypeStruct((batch, size, size, bands), jnp.float32)
    variables = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), train=False))
    forward = jax.jit(lambda v, x: encoder.apply(v, x, train=False))
    return _flops(forward.lower, variables, x) / batch


def grid_lines(config: Any, dtype: str = "bfloat16", progress: Any = None) -> list[Line]:
    """Every pre-training and evaluation of the grid with its steps and FLOPs per step."""
    from ssl4eo_jax.benchmark import driver
    from ssl4eo_jax.benchmark.grid import expand
    from ssl4eo_jax.train import total_steps

    cells = expand(config)
    lines: list[Line] = []
    pretrains = {c.pretrain_id: c for c in cells if c.pretrain}
    for pid, cell in (progress(pretrains.items(), desc="pre-training steps", unit="run") if progress else
                      pretrains.items()):
        cfg = driver.pretrain_config(config, cell)
        (train_n, _, _), shape = split_sizes(config, cell.pretrain)
        steps = total_steps(cfg, train_n / cfg.data.global_batch)
        lines.append(Line(f"pre-train {pid}", steps, pretrain_step_flops(cfg, shape, dtype)))
    forward_cache: dict[tuple[str, int, int], float] = {}
    for eval_id, cell in {c.eval_id: c for c in cells}.items():  # equal evaluations are shared, as in the driver
        cfg = driver.eval_config(config, cell, "random")
        (train_n, val_n, test_n), shape = split_sizes(config, cell.target)
        size = int(cfg.train.aug.crop_size) if "train" in cfg and "aug" in cfg.train else int(cfg.eval.size)
        key = (repr(sorted(cfg.model.to_dict().items())), size, shape[-1])  # the cell's encoder (ResNet or ViT)
        if key not in forward_cache:
            forward_cache[key] = encoder_forward_flops(cfg.model, size, shape[-1], dtype)
        fwd = forward_cache[key]
        labelled = max(1, int(train_n * cell.fraction))
        evaluated = val_n + test_n
        if cell.protocol == "knn":
            images = labelled + evaluated
        elif cell.protocol == "linear" and cfg.eval.get("protocol", "ours") == "reference":
            images = math.ceil(cfg.train.epochs) * labelled + evaluated
        elif cell.protocol == "linear":
            images = labelled + evaluated
        else:  # finetune: forward + backward (about three forward passes) per image and epoch
            images = 3 * math.ceil(cfg.train.epochs) * labelled + evaluated
        lines.append(Line(f"evaluate {eval_id}", images, fwd))
    return lines


def projection_table(lines: list[Line]) -> tuple[list[str], list[list[Any]], float]:
    """Rows of hours per target and MFU, and the MFU that fits the grid in 24 h; the total PFLOP."""
    total = sum(line.pflop for line in lines)
    header = ["target", "peak TFLOP/s"] + [f"hours at {int(100 * m)} % MFU" for m in MFUS] + ["MFU for 24 h"]
    rows = [[name, f"{peak:.0f}"] + [f"{total * 1e15 / (peak * 1e12 * m) / 3600:.1f}" for m in MFUS]
            + [f"{100 * total * 1e15 / (peak * 1e12 * 24 * 3600):.1f} %"] for name, peak in TARGETS.items()]
    return header, rows, total

