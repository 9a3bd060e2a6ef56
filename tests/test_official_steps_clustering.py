"""Step equivalence of SwAV and DINO with their official PyTorch training steps.

Both sides start from the same weights (our initial state copied into PyTorch), see the same fixed
views (no augmentation) and take 3 optimizer steps; parameters, BatchNorm running statistics, the
method's state and the losses must agree to 1e-4 relative (ours in float32 on the CPU, the
official in float64: see Precision). The PyTorch side is
``tests/official/swav.py`` (facebookresearch/swav ``main_swav.py`` ``train``) and
``tests/official/dino.py`` (facebookresearch/dino ``main_dino.py`` ``train_one_epoch``).

Views: ours go through the encoder interleaved per size group (``forward_joint``), the official
concatenated crop-major; BatchNorm sees the same examples either way and both return per-crop
(B, ...) outputs in the batch's order, so crop ``v`` of ours is rows ``v*B:(v+1)*B`` of theirs.

Precision: ours runs in float32; the official step runs in float64 (the same float32 initial weights
and views, exactly converted), so the comparison measures our round-off against the exact official
result. The official step's own float32 run on the CPU is too noisy for 1e-4: against its float64
run it is off by up to 4.6e-4 of a tensor's largest value after DINO's 3rd step (BN shifts, whose
gradients are sums that nearly cancel), and 8e-5 after SwAV's, while ours stays within 1.2e-5 and
2.7e-5 respectively.

Tolerances: ``rtol`` 1e-4 on every element, and an ``atol`` of 1e-4 times the largest magnitude
of the element's tensor (``ATOL_SCALE``; the queue: 1e-4 of each row's norm). Float32 round-off in
a gradient element is relative to the terms of its sum, i.e. to its tensor's scale, not to the
element, and these losses amplify it (Sinkhorn's ``exp(s / 0.05)``, DINO's teacher at 0.04), so
elements near 0 (BN shifts, which start at 0; running means) cannot meet a relative tolerance;
1e-4 of the tensor's scale is the same bound as ``rtol``, measured on the tensor (as in
``test_official_steps_siamese``). ``ATOL_FLOOR`` (1e-9) covers tensors that are 0 up to round-off:
SwAV's projector bias before BatchNorm has no gradient (BN removes it), ours drifts by ~1e-10.
SwAV's official step also runs in float32, and where that run's own error on a tensor (or on the
queue) is larger than these bounds, ours may be up to twice it (``harness.official_noise``): the
round-off depends on the CPU's kernels (the queue after step 3 is 1.26e-4 of its rows' norm from
the float64 result in the official code's own float32 run on an AVX-512 Xeon).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.official import dino as official_dino
from tests.official import harness
from tests.official import swav as official_swav

STEPS = 3
RTOL = 1e-4
ATOL_SCALE = 1e-4  # x the largest magnitude of the tensor (module docstring)
ATOL_FLOOR = 1e-9  # tensors that are 0 up to round-off (module docstring)
DTYPE = torch.float64  # of the official side (module docstring)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The PyTorch side on one thread: its ops are small, and OpenMP threads competing for a shared
    CPU made its steps 3-10x slower here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _np(x: Any) -> np.ndarray:
    return np.array(x)  # a writable copy (device_get arrays are read-only; torch.from_numpy warns)


def _torch_views(step_views: list[np.ndarray], dtype: torch.dtype = DTYPE) -> list[torch.Tensor]:
    """NHWC numpy views -> NCHW torch tensors of ``dtype``."""
    return [torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2))).to(dtype) for v in step_views]


def _torch_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _encoder(params: Any, batch_stats: Any) -> torch.nn.Module:
    return harness.torch_encoder({"params": params["encoder"], "batch_stats": batch_stats["encoder"]})


def _assert_close(ours: dict[str, np.ndarray], theirs: dict[str, torch.Tensor], what: str = "",
                  noise: dict[str, float] | None = None) -> None:
    """``harness.assert_close`` per tensor of ``theirs``, with ``atol`` ATOL_SCALE x its scale (or
    ``noise``'s bound, ``harness.official_noise``, where larger)."""
    for key, value in theirs.items():
        scale = float(value.detach().abs().max()) if value.numel() else 0.0
        harness.assert_close({key: ours[key]}, {key: value}, rtol=RTOL, atol=ATOL_SCALE * scale + ATOL_FLOOR,
                             what=what, noise=noise)


def _max_row_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """The largest distance between corresponding rows, relative to the row's norm in ``theirs``
    (rows that are 0 in ``theirs`` are left out)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    norm = np.linalg.norm(theirs, axis=-1)
    err = np.linalg.norm(ours - theirs, axis=-1)
    return float(np.max(err[norm > 0] / norm[norm > 0], initial=0.0))


def _assert_rows_close(ours: np.ndarray, theirs: np.ndarray, rtol: float = RTOL, what: str = "") -> None:
    """Rows (the queue's L2-normalised projections) agree to ``rtol`` of their norm.

    A unit vector's round-off is relative to its norm, not to each coordinate (our float32
    projections are up to 3e-6 from the float64 ones at step 1, PyTorch's own float32 ones 7.5e-6),
    so coordinates near 0 cannot meet a relative tolerance. Rows not yet written are exactly 0 on
    both sides.
    """
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    np.testing.assert_array_equal(np.linalg.norm(theirs, axis=-1) == 0, np.linalg.norm(ours, axis=-1) == 0,
                                  err_msg=f"{what}: empty rows")
    error = _max_row_error(ours, theirs)
    assert error <= rtol, f"{what}: max relative row error {error:.3g} (bound {rtol:.3g})"


# ----------------------------------------------------------------------------------------- SwAV

def _swav_ours(state: Any) -> dict[str, np.ndarray]:
    """Our SwAV state under the official model's state_dict names."""
    p, s = state["params"], state["batch_stats"]
    head, stats = p["projector"], s["projector"]
    out = {f"backbone.{k}": _np(v) for k, v in harness.encoder_state_dict(state).items()}
    out.update({
        "projection_head.0.weight": _np(head["linear0"]["kernel"]).T,
        "projection_head.0.bias": _np(head["linear0"]["bias"]),
        "projection_head.1.weight": _np(head["bn0"]["scale"]),
        "projection_head.1.bias": _np(head["bn0"]["bias"]),
        "projection_head.1.running_mean": _np(stats["bn0"]["mean"]),
        "projection_head.1.running_var": _np(stats["bn0"]["var"]),
        "projection_head.3.weight": _np(head["linear1"]["kernel"]).T,
        "projection_head.3.bias": _np(head["linear1"]["bias"]),
        "prototypes.weight": _np(p["prototypes"]["kernel"]).T,
    })
    return out


def _swav_theirs(model: official_swav.SwAVResNet) -> dict[str, torch.Tensor]:
    """The official model's state as the next iteration's forward sees it: ``train`` normalises the
    prototypes at the start of every iteration (ours right after the update that changed them)."""
    state = _torch_state(model)
    state["prototypes.weight"] = torch.nn.functional.normalize(state["prototypes.weight"], dim=1, p=2)
    return state


def _swav_torch(initial: Any, config: Any, dtype: torch.dtype = DTYPE) -> official_swav.SwAVResNet:
    p, s = initial["params"], initial["batch_stats"]
    head, cfg = p["projector"], config.swav
    projection_head = torch.nn.Sequential(
        harness.torch_linear(head["linear0"]["kernel"], head["linear0"]["bias"]),
        harness.torch_bn(head["bn0"]["scale"], head["bn0"]["bias"], int(cfg.hidden_mlp)),
        torch.nn.ReLU(inplace=True),
        harness.torch_linear(head["linear1"]["kernel"], head["linear1"]["bias"]),
    )
    with torch.no_grad():
        projection_head[1].running_mean.copy_(torch.from_numpy(_np(s["projector"]["bn0"]["mean"])))
        projection_head[1].running_var.copy_(torch.from_numpy(_np(s["projector"]["bn0"]["var"])))
    prototypes = harness.torch_linear(p["prototypes"]["kernel"])
    return official_swav.SwAVResNet(_encoder(p, s), projection_head, prototypes).to(dtype)


def _swav_official(initial: Any, config: Any, views: list[list[np.ndarray]], steps_per_epoch: int, total_steps: int,
                   dtype: torch.dtype) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
    """The official SwAV steps on ``views`` in ``dtype``: per step the loss, lr, whether the queue was
    used, the model's state and the queue; and the prototypes before and after the first step."""
    model = _swav_torch(initial, config, dtype)
    # The official lr schedule for the same step. Ours scales lr linearly with the batch (a
    # documented choice; the reference does not scale), so the reference lr is given our base value.
    base_lr, epochs = float(config.optim.lr), total_steps // steps_per_epoch
    trainer = official_swav.SwAVTrainer(
        model, lambda it: official_swav.ssl4eo_cosine_lr(base_lr, it // steps_per_epoch, epochs),
        weight_decay=float(config.optim.weight_decay), momentum=float(config.optim.momentum),
        nmb_crops=(2,), crops_for_assign=(0, 1), temperature=float(config.swav.temperature),
        epsilon=float(config.swav.epsilon), sinkhorn_iterations=int(config.swav.sinkhorn_iterations),
        queue_length=int(config.swav.queue_length), epoch_queue_starts=int(config.swav.epoch_queue_starts),
        freeze_prototypes_niters=int(config.swav.freeze_prototypes_niters), feat_dim=int(config.swav.feat_dim),
        niter_per_epoch=steps_per_epoch,
    )
    # (``train`` renormalises them at each iteration's start: our unit-norm columns, up to rounding)
    initial_prototypes = torch.nn.functional.normalize(model.prototypes.weight.detach(), dim=1, p=2)
    out = []
    for it, step_views in enumerate(views):
        loss = trainer.train_step(_torch_views(step_views, dtype), it)
        out.append({"loss": loss, "lr": trainer.optimizer.param_groups[0]["lr"], "used": trainer.use_the_queue,
                    "state": _swav_theirs(model), "queue": trainer.queue.detach().double().numpy().copy()})
        if it == 0:
            after_first = model.prototypes.weight.detach().clone()
    return out, initial_prototypes, after_first


def test_swav_matches_official_train_step():
    """facebookresearch/swav ``main_swav.py`` ``train`` (with ``distributed_sinkhorn`` and
    ``src/resnet50.py`` ``ResNet.forward``/``forward_head``), plain SGD as the SSL4EO review's
    ``src/bigearthnet_B12_swav_train.py``: 3 steps with the queue filled by steps 1-2 and used at
    step 3, the prototypes frozen at step 1 and trained at steps 2-3, the per-epoch cosine lr
    changing every step (one step per epoch).

    The official step also runs in float32: where its own round-off is larger than the fixed
    tolerances (the queue written at step 3: rows 1.26e-4 of their norm from the float64 result on
    an AVX-512 Xeon, ours 1.17e-4), ours is held to twice it (``harness.official_noise``)."""
    steps_per_epoch, total_steps = 1, 6  # 6 epochs of 1 step: lr 1, 0.93, 0.75 x base
    batch = harness.BATCH
    config = harness.method_config(
        "swav",
        **{"swav.hidden_mlp": 64, "swav.feat_dim": 32, "swav.prototypes": 16,
           "swav.queue_length": 2 * batch, "swav.epoch_queue_starts": 0.0, "swav.freeze_prototypes_niters": 1,
           # the reference's lr (x 16 / 256: ours scales it) and its So2Sat weight decay (10x BEN's)
           "optim.base_lr": 0.3, "optim.weight_decay": 1e-4,
           "optim.warmup_epochs": 0.0},  # the reference script's --cos schedule has no warm-up
    )
    views = harness.fixed_views(STEPS, 2)
    initial, states, metrics = harness.run_jax(config, views, steps_per_epoch, total_steps)

    _assert_close(_swav_ours(initial), _swav_theirs(_swav_torch(initial, config)), what="initial ")
    exact, initial_prototypes, after_first = _swav_official(initial, config, views, steps_per_epoch, total_steps,
                                                            DTYPE)
    rounded, _, _ = _swav_official(initial, config, views, steps_per_epoch, total_steps, torch.float32)
    for it, (theirs, theirs32) in enumerate(zip(exact, rounded, strict=True)):
        np.testing.assert_allclose(metrics[it]["lr"], theirs["lr"], rtol=1e-6)
        np.testing.assert_allclose(metrics[it]["loss"], theirs["loss"], rtol=RTOL, err_msg=f"loss at step {it}")
        _assert_close(_swav_ours(states[it]), theirs["state"], what=f"step {it}: ",
                      noise=harness.official_noise(theirs["state"], theirs32["state"]))
        queue_noise = harness.NOISE_FACTOR * _max_row_error(theirs32["queue"], theirs["queue"])
        _assert_rows_close(states[it]["extra"]["queue"], theirs["queue"], rtol=max(RTOL, queue_noise),
                           what=f"queue at step {it}")
    # frozen at step 1: not even weight decay or momentum touched them
    torch.testing.assert_close(after_first, initial_prototypes, rtol=0, atol=0)
    # The scenario the test is meant to cover did happen: the queue is used at step 3 only, and
    # the prototypes moved once unfrozen.
    assert [t["used"] for t in exact] == [False, False, True]
    assert [m["queue_used"] for m in metrics] == [0.0, 0.0, 1.0]
    assert not torch.allclose(exact[-1]["state"]["prototypes.weight"], initial_prototypes, atol=1e-4)


# ----------------------------------------------------------------------------------------- DINO

def _dino_ours(params: Any, batch_stats: Any) -> dict[str, np.ndarray]:
    """A DINO network of ours (student or teacher) under ``MultiCropWrapper``'s state_dict names."""
    head = params["projector"]
    out = {f"backbone.{k}": _np(v) for k, v in
           harness.encoder_state_dict({"params": params, "batch_stats": batch_stats}).items()}
    for i in range(3):  # Linear layers at mlp.0, mlp.2, mlp.4 (GELU between them, no BN)
        layer = head["mlp"][f"linear{i}"]
        out[f"head.mlp.{2 * i}.weight"] = _np(layer["kernel"]).T
        out[f"head.mlp.{2 * i}.bias"] = _np(layer["bias"])
    v = _np(head["last_layer"]["kernel"]).T  # (out_dim, bottleneck), weight_norm's v
    out["head.last_layer.weight_v"] = v
    out["head.last_layer.weight_g"] = np.ones((v.shape[0], 1), np.float32)  # norm_last_layer: fixed at 1
    return out


def _dino_torch(params: Any, batch_stats: Any, config: Any, norm_last_layer: bool) -> official_dino.MultiCropWrapper:
    cfg = config.dino
    hidden = tuple(cfg.hidden)
    assert len(set(hidden)) == 1, "the official DINOHead has one hidden width"
    head = official_dino.DINOHead(8 * harness.WIDTH, int(cfg.out_dim), use_bn=bool(cfg.use_bn),
                                  norm_last_layer=norm_last_layer, nlayers=len(hidden) + 1, hidden_dim=hidden[0],
                                  bottleneck_dim=int(cfg.bottleneck))
    ours = params["projector"]
    with torch.no_grad():
        for i in range(3):
            layer = ours["mlp"][f"linear{i}"]
            head.mlp[2 * i].weight.copy_(torch.from_numpy(_np(layer["kernel"]).T.copy()))
            head.mlp[2 * i].bias.copy_(torch.from_numpy(_np(layer["bias"])))
        head.last_layer.weight_v.copy_(torch.from_numpy(_np(ours["last_layer"]["kernel"]).T.copy()))
    return official_dino.MultiCropWrapper(_encoder(params, batch_stats), head).to(DTYPE)


def test_dino_matches_official_train_step():
    """facebookresearch/dino ``main_dino.py`` ``train_one_epoch`` with ``DINOLoss.forward`` /
    ``update_center``, ``vision_transformer.py`` ``DINOHead``, ``utils.MultiCropWrapper``,
    ``utils.clip_gradients``, ``utils.cancel_gradients_last_layer``, ``utils.get_params_groups``
    and ``utils.cosine_scheduler`` (lr with warm-up, teacher momentum): 2 global + 2 local crops,
    3 steps of one epoch each, so the lr (warm-up), teacher temperature (warm-up) and teacher
    momentum change every step and the last layer is frozen at step 1 only."""
    steps_per_epoch, epochs = 1, 6
    total_steps = epochs * steps_per_epoch
    local = 16
    config = harness.method_config(
        "dino",
        **{"dino.out_dim": 64, "dino.hidden": (64, 64), "dino.bottleneck": 32,
           "aug.local_views": 2, "aug.local_crop_size": local,
           "dino.warmup_teacher_temp": 0.04, "dino.teacher_temp": 0.07, "dino.warmup_teacher_temp_epochs": 3,
           "dino.freeze_last_layer": 1.0,
           # a teacher that moves visibly in 3 steps (0.9 -> 1 by cosine over the 6 steps)
           "dino.momentum_teacher": 0.9,
           # warm-up as cosine_scheduler's np.linspace (configs/dino.py sets optim.warmup_linspace);
           # weight decay 10x the recipe's, so that its exclusion from biases and norms shows;
           # clip_grad stays the recipe's 3.0: 8 to 18 of the 67 gradients are clipped at each step.
           "optim.warmup_epochs": 3.0, "optim.min_lr": 1e-6, "optim.weight_decay": 1e-3},
    )
    assert config.optim.warmup_linspace and config.optim.clip_grad == 3.0
    views = harness.fixed_views(STEPS, 4, sizes=(harness.SIZE, harness.SIZE, local, local))
    initial, states, metrics = harness.run_jax(config, views, steps_per_epoch, total_steps)

    p0, s0 = initial["params"], initial["batch_stats"]
    student = _dino_torch(p0, s0, config, norm_last_layer=bool(config.dino.norm_last_layer))
    # main_dino.py: the teacher's head is DINOHead(embed_dim, out_dim, use_bn) (norm_last_layer at
    # its default True) and it starts from the student's state_dict.
    teacher = _dino_torch(p0, s0, config, norm_last_layer=True)
    teacher.load_state_dict(student.state_dict())
    _assert_close(_dino_ours(p0, s0), _torch_state(student), what="initial student ")
    ex0 = initial["extra"]
    _assert_close(_dino_ours(ex0["teacher_params"], ex0["teacher_batch_stats"]), _torch_state(teacher),
                  what="initial teacher ")

    cfg, optim = config.dino, config.optim
    loss_fn = official_dino.DINOLoss(int(cfg.out_dim), 2 + int(config.aug.local_views), float(cfg.warmup_teacher_temp),
                                     float(cfg.teacher_temp), int(cfg.warmup_teacher_temp_epochs), epochs,
                                     student_temp=float(cfg.student_temp), center_momentum=float(cfg.center_momentum)
                                     ).to(DTYPE)
    # main_dino.py's schedules. Its lr is args.lr * batch / 256 (our optim.lr); min_lr is not scaled.
    lr_schedule = official_dino.cosine_scheduler(float(optim.lr), float(optim.min_lr), epochs, steps_per_epoch,
                                                 warmup_epochs=int(optim.warmup_epochs))
    wd_schedule = official_dino.cosine_scheduler(float(optim.weight_decay), float(optim.weight_decay), epochs,
                                                 steps_per_epoch)  # the ResNet recipe: weight_decay_end = weight_decay
    momentum_schedule = official_dino.cosine_scheduler(float(cfg.momentum_teacher), 1, epochs, steps_per_epoch)
    trainer = official_dino.DINOTrainer(student, teacher, loss_fn, lr_schedule, wd_schedule, momentum_schedule,
                                        steps_per_epoch, clip_grad=float(optim.clip_grad),
                                        freeze_last_layer=int(cfg.freeze_last_layer))

    last_layer0 = student.head.last_layer.weight_v.detach().clone()
    for it in range(STEPS):
        loss = trainer.train_step(_torch_views(views[it]), it)
        np.testing.assert_allclose(metrics[it]["lr"], lr_schedule[it], rtol=1e-6, atol=1e-9, err_msg=f"lr at {it}")
        np.testing.assert_allclose(metrics[it]["teacher_temp"], loss_fn.teacher_temp_schedule[it], rtol=1e-6)
        np.testing.assert_allclose(metrics[it]["momentum"], momentum_schedule[it], rtol=1e-6)
        np.testing.assert_allclose(metrics[it]["loss"], loss, rtol=RTOL, err_msg=f"loss at step {it}")
        st, ex = states[it], states[it]["extra"]
        _assert_close(_dino_ours(st["params"], st["batch_stats"]), _torch_state(student), what=f"step {it} student: ")
        _assert_close(_dino_ours(ex["teacher_params"], ex["teacher_batch_stats"]), _torch_state(teacher),
                      what=f"step {it} teacher: ")
        _assert_close({"center": ex["center"]}, {"center": loss_fn.center[0]}, what=f"step {it} ")
        if it == 0:  # cancel_gradients_last_layer: no update, decay or momentum in epoch 0
            torch.testing.assert_close(student.head.last_layer.weight_v.detach(), last_layer0, rtol=0, atol=0)
    assert not torch.allclose(student.head.last_layer.weight_v.detach(), last_layer0, atol=1e-4)

