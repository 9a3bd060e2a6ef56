"""ViT encoders in the step bench (``bench --what=step --model=vit_s16``): XLA's FLOP count against the
analytic count of a transformer, the step's figures, the model sections, and one-line refusals."""

import jax
import jax.numpy as jnp
import pytest

from ssl4eo_jax.bench import models
from ssl4eo_jax.bench.projection import _flops, encoder_forward_flops
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods.base import build_encoder
from ssl4eo_jax.models.vit import VIT_SIZES


def vit_flops(name: str, size: int, bands: int, patch: int = 16, depth: int | None = None) -> tuple[int, int]:
    """(patch embedding, whole forward pass) FLOPs per image of a ViT: 2 x its matrix parameters x
    tokens (qkv, proj, fc1, fc2: 12 D^2 per block; the patch embedding over the N patches) plus the
    attention's two T x T x D products (4 T^2 D per block), T = N + 1 with the class token."""
    dim, layers, _, _ = VIT_SIZES[name]
    n = (size // patch) ** 2
    t = n + 1
    embed = 2 * n * patch * patch * bands * dim
    return embed, embed + (depth or layers) * (2 * t * 12 * dim * dim + 4 * t * t * dim)


@pytest.mark.parametrize("name", ["vit_tiny", "vit_s16", "vit_b16"])
def test_vit_forward_flops_match_the_analytic_count(name):
    xla = encoder_forward_flops(models.default_section(name, 112), 112, 13, "float32", batch=2)
    _, analytic = vit_flops(name, 112, 13)
    # XLA also counts LayerNorm, softmax, the exact GELU, biases and residual adds: under 7 % at
    # ViT-Ti's width (192), under 2 % at ViT-B's (768).
    assert analytic <= xla <= 1.07 * analytic, (xla, analytic)


def test_vit_forward_and_backward_are_three_forward_passes():
    """The backward pass of every matrix product is two products (input and weight gradient), but the
    patch embedding needs no input gradient (its input is the data): 3 x forward - embedding."""
    section = models.default_section("vit_tiny", 64)
    section.dtype = "float32"
    encoder = build_encoder(section)
    x = jax.ShapeDtypeStruct((2, 64, 64, 13), jnp.float32)
    variables = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    grad = jax.jit(lambda v, x: jax.grad(lambda p: encoder.apply({"params": p}, x).sum())(v["params"]))
    xla = _flops(grad.lower, variables, x) / 2
    embed, forward = vit_flops("vit_tiny", 64, 13)
    assert 3 * forward - embed <= xla <= 1.04 * (3 * forward - embed), (xla, forward)


def test_step_bench_measures_a_vit_step():
    from ssl4eo_jax.bench.step_bench import bench_step

    small = {"model.name": "vit_tiny", "model.depth": 2, "model.patch_size": 8, "barlow.projector": (32, 32, 32)}
    r = bench_step("barlow", 8, 36, 32, dtype="float32", iters=1, peak_tflops=1.0, overrides=small)
    assert r["model"] == "vit_tiny (patch 8)" and r["images_per_sec"] > 0 and r["fwd_bwd_ms"] > 0
    # Two 32 px views of 8 images through the encoder forward and backward (3 x forward less the
    # patch embedding's input gradient), plus the small projector, the augmentation and the update,
    # which each of the (8 simulated) devices repeats: within 30 % above (7 % on one device).
    embed, forward = vit_flops("vit_tiny", 32, 13, patch=8, depth=2)
    encoder = 2 * 8 * (3 * forward - embed)
    total = r["flops_per_step"] * jax.device_count()  # XLA counts the partitioned program, per device
    assert encoder <= total <= 1.3 * encoder, (total, encoder)
    assert r["tflops_achieved"] == pytest.approx(r["flops_per_step"] / (r["step_ms"] / 1e3) / 1e12)
    assert r["mfu"] == pytest.approx(r["tflops_achieved"] / 1.0)


def test_model_sections_switch_family_and_keep_what_both_have():
    resnet = models.default_section("resnet18", 112)
    resnet.dtype = "bfloat16"
    vit = models.apply_model_overrides(resnet, {"name": "vit_s16", "patch_size": 8}, 112)
    assert vit.name == "vit_s16" and vit.patch_size == 8 and vit.img_size == 112 and vit.dtype == "bfloat16"
    assert models.model_label(vit) == "vit_s16 (patch 8)" and models.model_label(resnet) == "resnet18"
    bigger = models.switch_model(vit, "vit_b16", 112)  # a ViT's own settings stay, its size is the name's
    assert (bigger.patch_size, bigger.depth, bigger.dtype) == (16, 12, "bfloat16")
    back = models.switch_model(vit, "resnet34", 112)
    assert back.name == "resnet34" and back.width == 64 and back.dtype == "bfloat16" and "patch_size" not in back
    # A grid's ResNet width does nothing to a ViT; the bench's own overrides must fit the model.
    assert "width" not in models.apply_model_overrides(vit, {"width": 16}, 112, lenient=True)
    with pytest.raises(ConfigError, match=r"model.width is not a setting of vit_s16 \(a ViT\)"):
        models.apply_model_overrides(vit, {"width": 16}, 112)
    with pytest.raises(ConfigError, match=r"model.patch_size is not a setting of resnet18"):
        models.apply_model_overrides(models.default_section("resnet18", 112), {"patch_size": 8}, 112)
    with pytest.raises(ConfigError, match="Unknown model 'vit_h14'"):
        models.switch_model(vit, "vit_h14", 112)
    assert models.split_model_overrides({"model.width": 8, "model": {"stem": "small"}, "barlow.x": 1}) == (
        {"width": 8, "stem": "small"}, {"barlow.x": 1})


def test_torch_reference_is_a_resnet18_step_and_skips_others():
    from ssl4eo_jax.bench import suite
    from ssl4eo_jax.bench.torch_step import reference_skip

    assert reference_skip("resnet18") is None
    assert reference_skip("vit_s16") == "it is a resnet18 Barlow Twins step; this one runs vit_s16"
    table = suite.suite_table({"rows": [], "torch_reference_skipped": reference_skip("vit_s16")})
    assert table.endswith("PyTorch reference step skipped: it is a resnet18 Barlow Twins step; this one runs vit_s16.")


@pytest.mark.parametrize("args, message", [
    (["--what=step", "--model=vit_h14"], "error: Unknown model 'vit_h14' (--model); choose one of resnet18"),
    (["--what=step", "--model=resnet18", "--patch_size=8"], "error: --patch_size is a ViT's setting"),
    (["--what=step", "--model=vit_s16", "--crop=100"],
     "error: --crop=100 is not a multiple of the ViT's patch size 16"),
    (["--what=projection", "--model=vit_s16"], "error: --model and --patch_size do not apply to --what=projection"),
])
def test_bad_model_flags_are_one_line(args, message):
    from tests.test_bad_inputs import run_cli

    proc = run_cli("ssl4eo_jax.bench", *args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr


def test_layers_says_it_profiles_resnets_for_a_vit():
    from tests.test_bad_inputs import run_cli

    proc = run_cli("ssl4eo_jax.bench", "--what=layers", "--model=vit_s16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = "--what=layers profiles a ResNet's convolutions (resnet18, resnet34); --model=vit_s16 is a ViT"
    assert line in proc.stdout
