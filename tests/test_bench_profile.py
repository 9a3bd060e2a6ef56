"""``bench --what=layers`` (the convolution profile) and ``bench --what=memory`` (the largest batch that
fits in host RAM), issue 15, at tiny sizes."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl4eo_jax.bench import conv_profile, host_memory
from ssl4eo_jax.models.resnet import resnet


def test_the_profiled_convolutions_are_the_networks_own():
    """Every kernel of a 13-band ResNet-18 appears with its count, and the counted forward FLOPs are
    XLA's count of the encoder's forward pass less its few non-convolution FLOPs."""
    shapes = conv_profile.resnet_convolutions("resnet18", 112, 13)
    profiled = Counter()
    for s in shapes:
        profiled[(s.kernel, s.kernel, s.cin, s.cout)] += s.count
    variables = jax.eval_shape(lambda: resnet("resnet18").init(jax.random.key(0), jnp.zeros((1, 112, 112, 13))))
    kernels = Counter(tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
                      if leaf.ndim == 4)
    assert profiled == kernels and sum(profiled.values()) == 20
    assert [s.out_size for s in shapes if "3x3 " in s.name and "/2" not in s.name] == [28, 14, 7, 4]
    assert shapes[0].out_size == 56 and not shapes[0].needs_dx and all(s.needs_dx for s in shapes[1:])

    from ml_collections import ConfigDict

    from ssl4eo_jax.bench.projection import encoder_forward_flops
    from ssl4eo_jax.models.conv import native_convolutions

    with native_convolutions():
        xla = encoder_forward_flops(ConfigDict({"name": "resnet18", "stem": "imagenet", "width": 64}), 112, 13, "float32")
    counted = sum(s.count * s.flops(1) for s in shapes)
    assert 0.98 * xla < counted <= xla, (counted, xla)  # BN, ReLU, pooling: under 2 %


def test_profile_totals_weigh_each_shape_by_its_count_without_the_stems_input_gradient():
    pytest.importorskip("torch")
    out = conv_profile.profile_convolutions("resnet18", 2, 32, iters=1, with_torch=True)
    assert set(out["totals"]) == {"xla", "torch"} and len(out["rows"]) == 11
    for impl in ("xla", "torch"):
        for part in conv_profile.PARTS:
            expected = sum(r["count"] * r[impl][part] for r in out["rows"] if part != "dx" or r["needs_dx"])
            assert out["totals"][impl][part] == pytest.approx(expected) and expected > 0
    table = conv_profile.profile_table(out)
    lines = table.splitlines()
    assert len(lines) == 2 + 11 + 1 and lines[2].split("|")[1].strip() == "conv1 7x7/2"
    assert lines[2].split("|")[6].strip() == "-"  # the stem's dx is not run in training
    ratio = sum(out["totals"]["xla"].values()) / sum(out["totals"]["torch"].values())
    assert float(lines[-1].split("|")[-2]) == pytest.approx(ratio, abs=0.006)


def test_largest_batch_solves_the_line_and_confirms_it():
    linear = lambda b: 1000 + 10 * b  # noqa: E731
    r = host_memory.largest_batch(linear, 5000, multiple=64)
    assert r["batch"] == 384 and r["bytes"] == 4840 and r["fits"]  # (5000 - 1000) / 10 = 400, down to 6 x 64
    assert r["bytes_per_image"] == pytest.approx(10) and r["fixed_bytes"] == pytest.approx(1000)
    convex = lambda b: 1000 + 10 * b + (0 if b <= 256 else 4 * (b - 256))  # noqa: E731 - grows faster past the probes
    r = host_memory.largest_batch(convex, 5000, multiple=64)
    assert r["batch"] == 320 and r["bytes"] == 1000 + 3200 + 256 and r["fits"]  # 384 needs 5352: one step down
    concave = lambda b: 1000 + 10 * b - (0 if b <= 256 else 4 * (b - 256))  # noqa: E731 - grows slower past the probes
    r = host_memory.largest_batch(concave, 5000, multiple=64)
    assert r["batch"] == 448 and r["bytes"] == 1000 + 4480 - 768 and r["fits"]  # the line said 384; 512 needs 5096
    with pytest.raises(ValueError, match="does not grow"):
        host_memory.largest_batch(lambda b: 7, 5000)


def test_step_memory_grows_with_the_batch_from_the_state_up():
    from ssl4eo_jax.bench.step_bench import step_memory_bytes

    small = {"model.width": 8, "barlow.projector": (32, 32, 32)}
    sizes = {b: step_memory_bytes("barlow", b, 36, 32, dtype="float32", overrides=small) for b in (64, 128, 256)}
    per_image = (sizes[256] - sizes[128]) / 128
    # Each image brings at least its uint16 patch (an argument) and its two float32 views' activations.
    assert sizes[64] < sizes[128] < sizes[256] and per_image > 36 * 36 * 13 * 2 + 2 * 32 * 32 * 13 * 4, per_image
    assert sizes[128] == pytest.approx(sizes[64] + 64 * per_image, rel=0.1)  # close to a line
    assert host_memory.host_memory_bytes() > host_memory.resident_bytes() > 0
    assert np.isfinite(per_image)


def test_memory_command_prints_and_writes_a_confirmed_batch_per_method(tmp_path):
    import json

    from tests.test_bad_inputs import run_cli

    out = tmp_path / "memory.json"
    proc = run_cli("ssl4eo_jax.bench", "--what=memory", "--methods=simclr", "--crop=32", "--patch=36", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["memory"]["rows"]
    assert row["method"] == "simclr" and row["fits"] and row["batch"] % 64 == 0
    assert row["bytes"] <= row["budget_bytes"] < row["next_bytes"]  # the largest: the next multiple of 64 does not fit
    line = next(line for line in proc.stdout.splitlines() if line.startswith("| simclr"))
    assert [c.strip() for c in line.strip("|").split("|")][:2] == ["simclr", str(row["batch"])]
