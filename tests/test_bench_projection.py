"""``bench --what=projection``: XLA's FLOP counts against an analytic ResNet-18 count, and the grid's
projection against its own arithmetic (issue 15)."""

import math

import pytest
from ml_collections import ConfigDict

from ssl4eo_jax.bench.projection import MFUS, TARGETS, Line, encoder_forward_flops, grid_lines, projection_table
from ssl4eo_jax.benchmark.grid import expand
from ssl4eo_jax.presets.files import load_config_module

benchmark = load_config_module("benchmark")


def resnet18_macs(size: int, bands: int, width: int = 64) -> int:
    """Multiply-accumulates of torchvision's ResNet-18 convolutions (ImageNet stem, no fc), per image,
    counting only the kernel taps that fall inside the image (not on the zero padding), as XLA does."""
    def conv(h: int, k: int, cin: int, cout: int, stride: int) -> tuple[int, int]:
        out, pad = math.ceil(h / stride), k // 2
        taps = sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - pad + t < h)  # one axis
        return out, taps * taps * cin * cout

    h, total = conv(size, 7, bands, width, 2)
    h = math.ceil(h / 2)  # max pool
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            stride = 2 if stage and not block else 1
            h_in = h
            h, a = conv(h_in, 3, cin, cout, stride)
            _, b = conv(h, 3, cout, cout, 1)
            total += a + b
            if stride != 1 or cin != cout:
                total += conv(h_in, 1, cin, cout, stride)[1]
            cin = cout
    return total


def test_encoder_forward_flops_are_twice_the_resnet18_macs():
    model = ConfigDict({"name": "resnet18", "stem": "imagenet", "width": 64})
    xla = encoder_forward_flops(model, 112, 13, "float32", batch=8)
    analytic = 2 * resnet18_macs(112, 13)
    # XLA also counts BatchNorm, ReLU, pooling and the residual adds: under 1 % on top.
    assert analytic <= xla <= 1.01 * analytic, (xla, analytic)


def test_projection_of_the_test_grid_adds_up():
    config = benchmark.get_config("test")
    lines = grid_lines(config, "float32")
    cells = expand(config)
    pretrains = [line for line in lines if line.what.startswith("pre-train")]
    assert len(pretrains) == len({c.pretrain_id for c in cells if c.pretrain})
    assert len(lines) - len(pretrains) == len({c.eval_id for c in cells})
    assert all(line.steps == 2 for line in pretrains)  # the test preset's config.pretrain.train.steps
    # A step of Barlow Twins runs the encoder forward and backward on two views of the global batch:
    # forward, weight gradients and input gradients (none for the input image itself): more than 2 x 2.5
    # forward passes per example, plus projector, augmentation and update.
    model = ConfigDict({"name": "resnet18", "stem": "imagenet", "width": config.model.width})
    forward = encoder_forward_flops(model, config.pretrain.aug.crop_size, 12, "float32")
    batch = config.pretrain.data.global_batch
    for line in pretrains:
        assert 5 * batch * forward <= line.flops_per_step <= 12 * batch * forward, line
    header, rows, total = projection_table(lines)
    assert total == pytest.approx(sum(line.steps * line.flops_per_step for line in lines) / 1e15)
    for (name, peak), row in zip(TARGETS.items(), rows):
        for mfu, hours in zip(MFUS, row[2:]):
            assert float(hours) == pytest.approx(total * 1e15 / (peak * 1e12 * mfu) / 3600, abs=0.051)


def test_projection_table_arithmetic():
    lines = [Line("a", 1000, 1e12), Line("b", 500, 2e12)]  # 2 PFLOP
    _, rows, total = projection_table(lines)
    assert total == pytest.approx(2.0)
    h100 = rows[0]
    assert h100[0] == "H100 SXM" and float(h100[2]) == pytest.approx(2e15 / (989e12 * 0.30) / 3600, abs=0.05)
    assert h100[-1] == f"{100 * 2e15 / (989e12 * 86400):.1f} %"
