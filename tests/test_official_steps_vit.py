"""Step equivalence with the official code: MoCo v3 and MAE (ViTs).

As ``test_official_steps_siamese``: our method (``harness.run_jax``: ``ssl4eo_jax.train.update_step``)
and a PyTorch re-implementation of the official training step (``tests/official/mocov3.py``,
``tests/official/mae.py``) start from the same weights (our initial state, the ViT loaded into
tests/torch_vit.py's timm-layout ViT through ``interop.vit_weights``), take 3 optimizer steps on the
same fixed views, and after every step the loss, the lr and every parameter (and BatchNorm running
statistics, and MoCo v3's momentum encoder) must agree with the official step run in float64,
within ``_assert_matches_exact``'s tolerances or twice the official float32 run's own round-off.

Settings, on both sides alike: a 2-block ViT-Ti (192 wide, 3 heads) with 8 px patches on 32 px
views of 13 bands, batch 16; tiny heads (MoCo v3: mlp_dim 64, dim 32; MAE: a decoder 64 wide, 2
blocks, 2 heads); 2 steps per epoch over 2 epochs with half an epoch of warm-up, so the 3 steps run
at lr 0 (warm-up), the full lr (cosine start) and 0.75 of it (fractional epochs, per iteration, as
both official scripts); lr 1e-3 (every trained matrix moves by 1-7 %); weight decay
1.0 so that its decay of the LayerNorm scales (MoCo v3 decays every parameter; MAE none of the 1-D
ones) shows; MoCo v3's base momentum 0.5, so that its cosine to 1 (0.5, 0.57, 0.75, 0.93 at steps 0-3)
moves the momentum encoder visibly.

MoCo v3's momentum encoder: the official moves it at the *start* of iteration t with m_t, onto the
base encoder as step t-1 left it; ours moves it at the end of step t-1 (``after_update``) with the
same m_t. So after step t, ours is compared with the official momentum encoder as iteration t+1 will
update it before its forward: ``_update_momentum_encoder(m_{t+1})`` applied to a copy.

MAE's mask: the official draws ``torch.rand`` noise; here its ``random_masking`` gets, as noise, the
rank of each patch in the shuffle that our ``random_masking`` drew from the step's key
(``method_key(seed, step)``, the key ``Method.loss`` gets), so both mask the same patches, and the
official's mask and ``ids_restore`` are checked against ours.

Attention's key biases are compared apart (see ``KEY_BIAS_EXACT``): their exact gradient is 0 and
their float32 values are Adam-amplified round-off on either side.

With these settings, mutations of the official side fail by far: MoCo v3 with the momentum encoder
moved one iteration late (m_{t-1}) by ~1600x the tolerance, without ``--stop-grad-conv1`` by ~3900x,
without weight decay on biases and norms by ~700x, and ``MoCo_ResNet``'s predictor (no last BN)
has other variables; MAE with weight decay on every parameter by ~30x, ``norm_pix_loss`` with the
biased variance by ~60x, another step's mask by ~7500x. Unmutated, ours stays within 0.65x (MoCo v3)
and 0.25x (MAE) of the tolerance.
"""

from __future__ import annotations

import copy
import re
import types
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_vit
from flax import traverse_util
from test_official_steps_siamese import _assert_matches_exact, _load_mlp, _mlp_vars, _nchw, _ours

from ssl4eo_jax.interop.vit_weights import vit_encoder_to_state_dict
from ssl4eo_jax.methods.base import method_key
from ssl4eo_jax.models.mae_decoder import random_masking
from ssl4eo_jax.models.vit import VIT_SIZES
from ssl4eo_jax.presets import pretrain as common
from ssl4eo_jax.presets.files import load_config_module
from tests.official import mae as official_mae
from tests.official import mocov3 as official_mocov3
from tests.official.harness import BANDS, BATCH, SIZE, fixed_views, run_jax

N_STEPS = 3
DEPTH, PATCH = 2, 8
DIM, _, HEADS, _ = VIT_SIZES["vit_tiny"]
# 2 steps per epoch, 2 epochs, warm-up over the first step: lr 0, lr, 0.75 lr at steps 0, 1, 2.
STEPS_PER_EPOCH, EPOCHS, WARMUP_EPOCHS = 2, 2, 0.5
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
LR = 1e-3  # optim.lr = base_lr * BATCH / 256
WEIGHT_DECAY = 1.0
# Attention's key bias gets no gradient in exact arithmetic (``q . (W x_j + b)`` shifts every key's
# logit of a query alike, which the softmax ignores), and its value changes no output: the official
# float64 step leaves it at ~1e-13. In float32 its gradient is round-off (1e-11..1e-8) that Adam
# divides by its own RMS (+ eps 1e-8), so each implementation moves it by a random fraction of the lr
# (ours up to 0.5 lr in MoCo v3): not comparable element by element. Its third of ``qkv.bias`` is
# held apart: the official float64 one within KEY_BIAS_EXACT of 0, ours within KEY_BIAS_STEPS x the
# sum of the lrs so far (no more than AdamW's normalised steps can move a parameter).
KEY_BIAS_EXACT = 1e-9
KEY_BIAS_STEPS = 2.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """PyTorch on one thread (see test_official_steps_siamese)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vit_config(name: str, **overrides: Any):
    """``configs/<name>.py:demo`` at test size: float32, a ``DEPTH``-block ViT-Ti with ``PATCH`` px
    patches on ``SIZE`` px views, the compressed schedule above."""
    config = load_config_module(name).get_config("demo")
    config.data.global_batch = BATCH
    config.aug.crop_size = SIZE
    config.model.depth = DEPTH
    config.model.patch_size = PATCH
    config.model.dtype = "float32"
    common.apply_overrides(config, {"optim.base_lr": LR * 256 / BATCH, "optim.weight_decay": WEIGHT_DECAY,
                                    "optim.warmup_epochs": WARMUP_EPOCHS, **overrides})
    assert config.model.name == "vit_tiny" and config.model.img_size == SIZE and config.model.pos_embed == "sincos"
    return config


def _views() -> tuple[list[list[np.ndarray]], list[list[torch.Tensor]]]:
    views = fixed_views(N_STEPS)
    return views, [[_nchw(v) for v in step] for step in views]


def _np64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy().copy()


def _torch_vit(encoder_params: Mapping[str, Any], num_classes: int) -> torch_vit.VisionTransformer:
    """tests/torch_vit.py's timm ViT holding our encoder's weights (its ``head`` left as built)."""
    model = torch_vit.VisionTransformer(img_size=SIZE, patch_size=PATCH, in_chans=BANDS, num_classes=num_classes,
                                        embed_dim=DIM, depth=DEPTH, num_heads=HEADS)
    state = {k: torch.from_numpy(np.array(v)) for k, v in vit_encoder_to_state_dict({"params": encoder_params}).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == {"head.weight", "head.bias"}, (missing, unexpected)
    return model


def _encoder_vars(params: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix} {k}": np.asarray(v) for k, v in vit_encoder_to_state_dict({"params": params}).items()}


def _split_key_bias(snapshot: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``snapshot`` with each ``attn.qkv.bias`` cut to its query and value thirds, and the key thirds."""
    main, keys = dict(snapshot), {}
    for name, value in snapshot.items():
        if name.endswith("attn.qkv.bias"):
            d = value.shape[0] // 3
            main[name] = np.concatenate([value[:d], value[2 * d:]])
            keys[name] = value[d:2 * d]
    return main, keys


def _assert_matches_official(official: Callable[[torch.dtype], tuple[list[dict], list[tuple]]],
                             ours: list[dict[str, np.ndarray]], metrics: list[dict[str, float]]) -> list[tuple]:
    """``_assert_matches_exact`` on everything but the key thirds of the attention biases, which are
    checked as the comment on ``KEY_BIAS_EXACT`` says."""
    exact_keys: list[dict[str, np.ndarray]] = []

    def official_split(dtype: torch.dtype) -> tuple[list[dict], list[tuple]]:
        snapshots, scalars = official(dtype)
        split = [_split_key_bias(s) for s in snapshots]
        if dtype == torch.float64:
            exact_keys[:] = [keys for _, keys in split]
        return [main for main, _ in split], scalars

    split_ours = [_split_key_bias(s) for s in ours]
    scalars = _assert_matches_exact(official_split, [main for main, _ in split_ours], metrics)
    assert exact_keys and all(keys for keys in exact_keys)
    for step, ((_, mine), theirs) in enumerate(zip(split_ours, exact_keys)):
        assert set(mine) == set(theirs)
        bound = KEY_BIAS_STEPS * sum(lr for _, lr, *_ in scalars[:step])
        for name, value in theirs.items():
            assert np.abs(value).max() < KEY_BIAS_EXACT, f"after {step} steps: official {name} (key third)"
            assert np.abs(mine[name]).max() <= bound, f"after {step} steps: {name} (key third)"
    return scalars


def _assert_trained(initial: Mapping[str, Any], final: Mapping[str, Any], frozen: tuple[str, ...]) -> None:
    """Every trained matrix moved by > 50x RTOL; the ``frozen`` ones (path prefixes) not at all."""
    before = traverse_util.flatten_dict(dict(initial["params"]), sep="/")
    after = traverse_util.flatten_dict(dict(final["params"]), sep="/")
    for key, value in before.items():
        if any(key.startswith(prefix) for prefix in frozen):
            np.testing.assert_array_equal(after[key], value, err_msg=f"{key} is frozen")
        elif value.ndim > 1:
            change = np.linalg.norm(after[key] - value) / np.linalg.norm(value)
            assert change > 5e-3, f"{key} moved by only {change:.2e}"


# ----------------------------------------------------------------------------- MoCo v3


def _mocov3_ours(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our base encoder, projector, predictor and momentum encoder + projector under the names of
    ``_mocov3_snapshot``."""
    momentum = {"params": state["extra"]["momentum_params"], "batch_stats": state["extra"]["momentum_batch_stats"]}
    out = {**_encoder_vars(state["params"]["encoder"], "base encoder"),
           **_encoder_vars(momentum["params"]["encoder"], "momentum encoder")}
    for prefix, variables, heads in (("base", state, ("projector", "predictor")), ("momentum", momentum, ("projector",))):
        for head in heads:
            out.update({f"{prefix} {head} {k}": v for k, v in _ours(variables, head).items()})
    return out


def _mocov3_snapshot(model: official_mocov3.MoCoViT, m_next: float) -> dict[str, np.ndarray]:
    """The official networks; the momentum encoder as the next iteration's ``_update_momentum_encoder(m_next)``
    will make it before its forward (see the module docstring)."""
    pending = copy.deepcopy(model)
    pending._update_momentum_encoder(m_next)
    out = {}
    for prefix, encoder in (("base", model.base_encoder), ("momentum", pending.momentum_encoder)):
        out.update({f"{prefix} encoder {k}": _np64(v) for k, v in encoder.state_dict().items()
                    if not k.startswith("head.")})
        out.update({f"{prefix} projector {k}": _np64(v) for k, v in _mlp_vars(encoder.head).items()})
    out.update({f"base predictor {k}": _np64(v) for k, v in _mlp_vars(model.predictor).items()})
    return out


def _run_official_mocov3(config: Any, initial: Mapping[str, Any], tviews: list[list[torch.Tensor]],
                         dtype: torch.dtype, mutation: str | None = None
                         ) -> tuple[list[dict[str, np.ndarray]], list[tuple[float, float, float]]]:
    """``main_moco.py`` ``train`` from our initial weights in ``dtype``: snapshots (initial first)
    and each step's (loss, lr, moco_m). ``mutation`` (for checking that the test can fail):
    "momentum_late" (iteration t moves the momentum encoder with m_{t-1}), "train_patch" (no
    ``--stop-grad-conv1``), "no_decay_1d" (no weight decay on biases and norms)."""
    cfg = config.mocov3
    encoder = initial["params"]["encoder"]

    def base_encoder(num_classes: int) -> torch_vit.VisionTransformer:  # vits.vit_small(stop_grad_conv1=True)
        vit = _torch_vit(encoder, num_classes)
        vit = official_mocov3.stop_grad_conv1(vit)
        if mutation == "train_patch":
            vit.patch_embed.proj.weight.requires_grad = vit.patch_embed.proj.bias.requires_grad = True
        return vit

    model = official_mocov3.MoCoViT(base_encoder, int(cfg.dim), int(cfg.mlp_dim), float(cfg.temperature))
    _load_mlp(model.base_encoder.head, initial, "projector")
    _load_mlp(model.predictor, initial, "predictor")
    model.momentum_encoder.head.load_state_dict(model.base_encoder.head.state_dict())  # MoCo.__init__'s copy
    model = model.to(dtype)
    args = types.SimpleNamespace(lr=config.optim.base_lr * BATCH / 256, weight_decay=config.optim.weight_decay,
                                 warmup_epochs=config.optim.warmup_epochs, epochs=EPOCHS, moco_m=cfg.momentum,
                                 moco_m_cos=True)
    optimizer = official_mocov3.make_optimizer(model, args)
    if mutation == "no_decay_1d":
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1]},
                                       {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                                      args.lr, weight_decay=args.weight_decay)

    schedule = types.SimpleNamespace(epochs=EPOCHS, moco_m=cfg.momentum)

    def momentum(t: int) -> float:
        t = max(t - 1, 0) if mutation == "momentum_late" else t
        return official_mocov3.adjust_moco_momentum(t / STEPS_PER_EPOCH, schedule)

    snapshots, scalars = [_mocov3_snapshot(model, momentum(0))], []
    for t in range(N_STEPS):
        x1, x2 = (v.to(dtype) for v in tviews[t])
        epoch, i = divmod(t, STEPS_PER_EPOCH)
        if mutation == "momentum_late":
            args.moco_m_cos = False
            args.moco_m = momentum(t)
        scalars.append(official_mocov3.train_step(model, optimizer, epoch, i, STEPS_PER_EPOCH, x1, x2, args))
        snapshots.append(_mocov3_snapshot(model, momentum(t + 1)))
    return snapshots, scalars


def _mocov3_config():
    # TINY heads; base momentum 0.5 so that the momentum encoder moves visibly in 3 steps.
    config = vit_config("mocov3", **{"mocov3.mlp_dim": 64, "mocov3.dim": 32, "mocov3.momentum": 0.5})
    assert config.mocov3.stop_grad_patch and config.optim.name == "adamw" and config.optim.weight_decay_1d
    assert (config.optim.b1, config.optim.b2) == (0.9, 0.999)  # torch.optim.AdamW's defaults
    return config


def test_mocov3_matches_official():
    """facebookresearch/moco-v3 ``moco/builder.py`` (``MoCo``, ``MoCo_ViT``: ``_build_mlp``,
    ``_build_projector_and_predictor_mlps``, ``_update_momentum_encoder``, ``contrastive_loss``,
    ``forward``), ``main_moco.py`` ``train`` (``adjust_learning_rate``, ``adjust_moco_momentum``,
    AdamW on ``model.parameters()``) and ``vits.py`` ``--stop-grad-conv1`` with the fixed
    sine-cosine position embeddings."""
    config = _mocov3_config()
    views, tviews = _views()
    initial, states, metrics = run_jax(config, views, STEPS_PER_EPOCH, TOTAL_STEPS)
    ours = [_mocov3_ours(s) for s in [initial, *states]]
    scalars = _assert_matches_official(lambda dtype: _run_official_mocov3(config, initial, tviews, dtype), ours, metrics)
    for step, (_, _, moco_m) in enumerate(scalars):
        np.testing.assert_allclose(metrics[step]["momentum"], moco_m, rtol=1e-6, err_msg=f"momentum at step {step}")
    assert [round(lr / LR, 6) for _, lr, _ in scalars] == [0.0, 1.0, 0.75]
    _assert_trained(initial, states[-1], ("encoder/patch_embed", "encoder/pos_embed"))


# ----------------------------------------------------------------------------- MAE


def _decoder_state_dict(decoder: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our ``params["decoder"]`` under ``MaskedAutoencoderViT``'s names (Dense kernels transposed)."""
    out = {}
    for path, value in traverse_util.flatten_dict(dict(decoder)).items():
        *modules, leaf = path
        modules = [re.sub(r"^decoder_blocks_(\d+)$", r"decoder_blocks.\1", m) for m in modules]
        value = np.asarray(value)
        out[".".join([*modules, {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)])] = (
            value.T if leaf == "kernel" else value)
    return out


def _mae_ours(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    params = state["params"]
    return {**{k: np.asarray(v) for k, v in vit_encoder_to_state_dict({"params": params["encoder"]}).items()},
            **_decoder_state_dict(params["decoder"])}


def _mae_masks(config: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per step, our ``random_masking`` (ids_keep, ids_restore, mask) from the key ``update_step``
    gives ``MAE.loss`` at that step."""
    grid = SIZE // PATCH
    return [tuple(np.asarray(a) for a in random_masking(method_key(config.seed, jnp.int32(step)), BATCH, grid * grid,
                                                       float(config.mae.mask_ratio)))
            for step in range(N_STEPS)]


def _run_official_mae(config: Any, initial: Mapping[str, Any], tviews: list[list[torch.Tensor]],
                      masks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], dtype: torch.dtype,
                      mutation: str | None = None) -> tuple[list[dict[str, np.ndarray]], list[tuple[float, float]]]:
    """``engine_pretrain.py`` ``train_one_epoch`` from our initial weights in ``dtype``: snapshots
    (initial first) and each step's (loss, lr). ``mutation`` (for checking that the test can fail):
    "decay_1d" (weight decay on every parameter, biases and norms too)."""
    cfg = config.mae
    model = official_mae.MaskedAutoencoderViT(
        img_size=SIZE, patch_size=PATCH, in_chans=BANDS, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
        decoder_embed_dim=int(cfg.decoder_dim), decoder_depth=int(cfg.decoder_depth),
        decoder_num_heads=int(cfg.decoder_heads), norm_pix_loss=bool(cfg.norm_pix_loss))
    state = {k: torch.from_numpy(np.array(v)) for k, v in _mae_ours(initial).items()}
    model.load_state_dict(state, strict=True)
    model = model.to(dtype)
    args = types.SimpleNamespace(lr=config.optim.base_lr * BATCH / 256, min_lr=0.0, weight_decay=config.optim.weight_decay,
                                 warmup_epochs=config.optim.warmup_epochs, epochs=EPOCHS, mask_ratio=float(cfg.mask_ratio))
    optimizer = official_mae.make_optimizer(model, args)
    if mutation == "decay_1d":
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                      betas=(0.9, 0.95), weight_decay=args.weight_decay)

    def snapshot() -> dict[str, np.ndarray]:
        return {k: _np64(v) for k, v in model.state_dict().items()}

    snapshots, scalars = [snapshot()], []
    for t in range(N_STEPS):
        _, ids_restore, mask = masks[t]
        noise = torch.from_numpy(ids_restore.astype(np.float64)).to(dtype)  # argsort(noise) = our shuffle
        epoch, i = divmod(t, STEPS_PER_EPOCH)
        loss, lr, their_mask, their_restore = official_mae.train_step(model, optimizer, epoch, i, STEPS_PER_EPOCH,
                                                                      tviews[t][0].to(dtype), noise, args)
        np.testing.assert_array_equal(their_restore.numpy(), ids_restore)
        np.testing.assert_array_equal(their_mask.numpy(), mask)
        scalars.append((loss, lr))
        snapshots.append(snapshot())
    return snapshots, scalars


def _mae_config():
    config = vit_config("mae", **{"mae.decoder_dim": 64, "mae.decoder_depth": 2, "mae.decoder_heads": 2})
    assert config.mae.norm_pix_loss and config.mae.mask_ratio == 0.75
    assert (config.optim.b1, config.optim.b2) == (0.9, 0.95) and not config.optim.get("weight_decay_1d", False)
    return config


def test_mae_matches_official():
    """facebookresearch/mae ``models_mae.py`` (``MaskedAutoencoderViT``: ``random_masking``,
    ``forward_encoder``, ``forward_decoder``, ``forward_loss`` with ``norm_pix_loss``, ``patchify``),
    ``main_pretrain.py`` (``add_weight_decay`` groups, AdamW betas (0.9, 0.95)) and
    ``engine_pretrain.py`` / ``util/lr_sched.py`` (per-iteration warm-up + cosine)."""
    config = _mae_config()
    views, tviews = _views()
    views = [step[:1] for step in views]  # one view per image
    initial, states, metrics = run_jax(config, views, STEPS_PER_EPOCH, TOTAL_STEPS)
    masks = _mae_masks(config)
    for step, (ids_keep, _, mask) in enumerate(masks):
        assert mask.sum(axis=1).tolist() == [12.0] * BATCH and ids_keep.shape == (BATCH, 4)
        assert metrics[step]["mask_ratio"] == 0.75
    scalars = _assert_matches_official(lambda dtype: _run_official_mae(config, initial, tviews, masks, dtype),
                                    [_mae_ours(s) for s in [initial, *states]], metrics)
    assert [round(lr / LR, 6) for _, lr in scalars] == [0.0, 1.0, 0.75]
    _assert_trained(initial, states[-1], ("encoder/pos_embed", "decoder/decoder_pos_embed"))
