"""ViT interop: timm-layout ViT state_dicts (the SSL4EO-S12 / torchgeo ViT-S/16 weights' layout)
convert exactly, load through an evaluator's --config.checkpoint, and exports load strictly into
timm's layout and round-trip bit-exactly."""

import json
import os
import subprocess
import sys
import types

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

import torch_vit  # noqa: E402
from test_interop import TOLERANCE, assert_same_tree, features, max_rel_error  # noqa: E402

from ssl4eo_jax.data import load_manifest  # noqa: E402
from ssl4eo_jax.export import export_checkpoint
from ssl4eo_jax.export import main as export_main  # noqa: E402
from ssl4eo_jax.interop import (  # noqa: E402
    InteropError,
    load_encoder_variables,
    load_torch_vit,
    restore_run,
    vit_encoder_to_state_dict,
)
from ssl4eo_jax.methods.base import build_encoder, init_encoder  # noqa: E402
from ssl4eo_jax.models.vit import resample_pos_embed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANDS = 13
# A small ViT-Ti-sized model: dim 192 (3 heads), 2 blocks, 8 px patches on 32 px inputs (4x4 grid).
SMALL = dict(img_size=32, patch_size=8, in_chans=BANDS, embed_dim=192, depth=2, num_heads=3)


def small_vit(seed: int = 0, **kwargs) -> torch.nn.Module:
    return torch_vit.randomise(torch_vit.VisionTransformer(**{**SMALL, "num_classes": 0, **kwargs}), seed)


def numpy_state(model: torch.nn.Module) -> dict:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def torch_pooled(model: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


def images(size: int, n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, size, size, BANDS)).astype(np.float32)


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- Exactness of the import ----------------------------------------------------------------------

@pytest.mark.parametrize("pool,timm_pool", [("token", "token"), ("mean", "avg")])
def test_converted_forward_matches_timm_layout(pool, timm_pool):
    model = small_vit(seed=1, num_classes=7, global_pool=timm_pool, fc_norm=False)
    weights = load_torch_vit(model.state_dict(), pool=pool)
    assert weights.model_cfg == {"name": "vit_tiny", "patch_size": 8, "depth": 2, "img_size": 32, "pool": pool,
                                 "pos_embed": "learned", "dtype": "auto"}
    assert weights.num_bands == BANDS and weights.grid == 4 and weights.variables["batch_stats"] == {}
    x = images(32)
    ours, theirs = features(weights.model_cfg, weights.variables, x), torch_pooled(model, x)
    assert ours.shape == theirs.shape == (3, 192)
    assert max_rel_error(ours, theirs) < TOLERANCE
    with torch.no_grad():
        logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert max_rel_error(ours @ weights.head["kernel"] + weights.head["bias"], logits) < TOLERANCE


def test_another_input_size_resamples_pos_embed():
    """48 px inputs (6x6 patches) on 32 px weights (4x4): our forward resamples pos_embed (jax.image.resize
    'cubic', Keys a=-0.5). The torch reference gets the same resampled pos_embed, so the two match to
    1e-4; timm's own bicubic (a=-0.75) would differ slightly, which is documented, not tested."""
    model = small_vit(seed=2)
    weights = load_torch_vit(model.state_dict())
    resampled = np.asarray(resample_pos_embed(weights.variables["params"]["pos_embed"], (6, 6)))
    assert resampled.shape == (1, 37, 192) and np.isfinite(resampled).all()
    np.testing.assert_array_equal(resampled[:, :1], weights.variables["params"]["pos_embed"][:, :1])
    x = images(48)
    ours = features(weights.model_cfg, weights.variables, x)
    with torch.no_grad():
        model.pos_embed = torch.nn.Parameter(torch.from_numpy(resampled.copy()))
    assert max_rel_error(ours, torch_pooled(model, x)) < TOLERANCE
    # Resampling once at load time (img_size=48) gives the same pos_embed and features.
    at48 = load_torch_vit(numpy_state(small_vit(seed=2)), img_size=48)
    assert at48.model_cfg["img_size"] == 48 and at48.grid == 4 and any("resampled pos_embed" in n for n in at48.notes)
    np.testing.assert_allclose(at48.variables["params"]["pos_embed"], resampled, rtol=0, atol=1e-6)
    np.testing.assert_allclose(features(at48.model_cfg, at48.variables, x), ours, rtol=0, atol=1e-5)


# --- Checkpoint shapes and the bit-exact round trip -----------------------------------------------

def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def test_prefixed_and_nested_checkpoints_round_trip_bit_exactly(tmp_path):
    state = numpy_state(small_vit(seed=3))
    other = numpy_state(small_vit(seed=4))
    head = {"head.weight": np.ones((5, 192), np.float32), "head.bias": np.zeros(5, np.float32)}
    mae_decoder = {"mask_token": np.zeros((1, 1, 16), np.float32),
                   "decoder_pos_embed": np.zeros((1, 17, 16), np.float32),
                   "decoder_blocks.0.norm1.weight": np.ones(16, np.float32)}
    variants = {
        "timm/torchgeo (plain)": (state, ""),
        "DataParallel with a head": (_prefixed({**state, **head}, "module."), "module."),
        "Lightning backbone.": ({"state_dict": _prefixed(state, "backbone.")}, "backbone."),
        "nested module.": ({"state_dict": _prefixed(state, "module."), "epoch": 3}, "module."),
        "MAE model": ({"model": {**state, **mae_decoder}, "epoch": 1}, ""),
        "MoCo-v3": ({"state_dict": {**_prefixed(state, "module.base_encoder."),
                                    **_prefixed(other, "module.momentum_encoder.")}}, "module.base_encoder."),
        "encoder.": (_prefixed(state, "encoder."), "encoder."),
        "model.": ({"model": _prefixed(state, "model.")}, "model."),
    }
    for label, (checkpoint, prefix) in variants.items():
        weights = load_torch_vit(checkpoint)
        assert weights.prefix == prefix, label
        exported = vit_encoder_to_state_dict(weights.variables)
        assert set(exported) == set(state), label
        for key, value in state.items():
            assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, (label, key)
            np.testing.assert_array_equal(exported[key], value, err_msg=f"{label}: {key}")
    assert load_torch_vit(variants["DataParallel with a head"][0]).head["kernel"].shape == (192, 5)
    # Files: .pth (nested, prefixed) and .safetensors alike; an exported prefix is written as given.
    torch.save({"state_dict": {"module." + k: torch.from_numpy(v) for k, v in state.items()}}, tmp_path / "m.pth")
    safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in state.items()}, str(tmp_path / "m.safetensors"))
    reference = load_torch_vit(state).variables
    for name in ("m.pth", "m.safetensors"):
        assert_same_tree(load_torch_vit(str(tmp_path / name)).variables, reference)
    assert set(vit_encoder_to_state_dict(reference, "backbone.")) == {"backbone." + k for k in state}


# --- A 13-band ViT-S/16 file as an evaluator's --config.checkpoint --------------------------------

def test_vit_s16_file_loads_and_runs_the_knn_evaluation(demo_dir, tmp_path):
    model = torch_vit.randomise(torch_vit.create_model("vit_small_patch16_224", in_chans=BANDS, num_classes=0), 5)
    path = str(tmp_path / "vit_small_patch16_224_sentinel2_all_moco.pth")
    torch.save(model.state_dict(), path)
    manifest = load_manifest(demo_dir)
    model_cfg, variables, norm = load_encoder_variables(path, expected_bands=list(manifest.bands))
    assert model_cfg == {"name": "vit_s16", "patch_size": 16, "depth": 12, "img_size": 224, "pool": "token",
                         "pos_embed": "learned", "dtype": "auto"}
    assert variables["params"]["pos_embed"].shape == (1, 197, 384) and variables["batch_stats"] == {}
    assert variables["params"]["blocks_11"]["attn"]["qkv"]["kernel"].shape == (384, 1152)
    assert norm.preset == "ssl4eo_s12" and norm.std == (10000.0,) * BANDS
    workdir = str(tmp_path / "knn")
    done = subprocess.run([sys.executable, "-m", "ssl4eo_jax.main", "--config=configs/eval/knn.py",
                           f"--config.checkpoint={path}", f"--config.data.dir={demo_dir}", "--config.eval.batch=32",
                           f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    for split in ("val", "test"):
        assert 0 <= results["metrics"][split]["oa"] <= 100


# --- Export of a ViT run --------------------------------------------------------------------------

def _save_vit_run(workdir: str, demo_dir: str, pool: str) -> dict:
    """A saved run of a small ViT (its initial encoder at step 1), in the layout train.py writes."""
    model_cfg = {"name": "vit_tiny", "patch_size": 8, "depth": 2, "img_size": 32, "pool": pool,
                 "pos_embed": "sincos", "weight_init": "xavier", "dtype": "auto"}
    encoder = build_encoder(ml_collections.ConfigDict(model_cfg))
    variables = jax.tree.map(np.asarray, init_encoder(encoder, jax.random.key(0), np.zeros((1, 32, 32, BANDS))))
    state = {"step": np.int32(1), "params": {"encoder": variables["params"]},
             "batch_stats": {"encoder": variables["batch_stats"]}, "extra": {}}
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "config"),
                                    options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(
        {"method": "barlow", "model": model_cfg, "data": {"name": "demo", "dir": demo_dir}})))
    manager.wait_until_finished()
    manager.close()
    return model_cfg


@pytest.mark.parametrize("pool", ["token", "mean"])
def test_vit_export_loads_strictly_into_timm_and_round_trips(demo_dir, tmp_path, capsys, monkeypatch, pool):
    workdir = str(tmp_path / "run")
    model_cfg = _save_vit_run(workdir, demo_dir, pool)
    out = str(tmp_path / "vit.safetensors")
    export_main(["--checkpoint", workdir, "--to", out, "--format", "timm"])
    assert "Load it with:" in capsys.readouterr().out
    with open(tmp_path / "vit.json") as f:
        sidecar = json.load(f)
    assert sidecar["model"] == {"name": "vit_tiny", "timm_name": "vit_tiny_patch16_224", "in_chans": BANDS,
                                "feature_dim": 192, "patch_size": 8, "img_size": 32, "depth": 2, "heads": 3,
                                "pool": pool}
    assert sidecar["bands"] == list(load_manifest(demo_dir).bands)
    timm_pool = "global_pool='token'" if pool == "token" else "global_pool='avg', fc_norm=False"
    assert (f"model = timm.create_model('vit_tiny_patch16_224', in_chans=13, num_classes=0, img_size=32, "
            f"patch_size=8, depth=2, {timm_pool})") in sidecar["load"]
    # The sidecar's recipe as written (load_state_dict(strict=True)), with the test-local ViT as timm.
    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=torch_vit.create_model))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec("\n".join(sidecar["load"]), namespace)  # noqa: S102 - our own generated recipe
    run = restore_run(workdir)
    x = images(32, seed=6)
    ours = features(model_cfg, run.encoder(), x)
    with torch.no_grad():
        theirs = namespace["model"](torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert max_rel_error(ours, theirs) < TOLERANCE
    # Import of the export: the run's encoder, bit-exactly.
    weights = load_torch_vit(out, pool=pool)
    assert {k: weights.model_cfg[k] for k in ("name", "patch_size", "depth", "img_size", "pool")} == \
        {k: model_cfg[k] for k in ("name", "patch_size", "depth", "img_size", "pool")}
    assert_same_tree(weights.variables["params"], run.encoder()["params"])
    assert set(safetensors_torch.load_file(out)) == set(namespace["model"].state_dict())
    with pytest.raises(InteropError) as info:
        export_checkpoint(workdir, str(tmp_path / "tv.pth"), "torchvision")
    assert "export it with --format timm" in one_line(info)


# --- Bad inputs: one line naming the file and the key ---------------------------------------------

def test_bad_vit_state_dicts_get_one_line_errors(tmp_path):
    state = numpy_state(small_vit(seed=7, depth=3))
    path = str(tmp_path / "truncated.pth")
    torch.save({k: torch.from_numpy(v) for k, v in state.items() if not k.startswith("blocks.1.")}, path)
    with pytest.raises(InteropError) as info:
        load_torch_vit(path)
    assert path in one_line(info) and "'blocks.1.norm1.weight'" in str(info.value)
    # A file cut short: the last keys (blocks.2.mlp.fc2, norm) are missing.
    keys = list(state)
    with pytest.raises(InteropError) as info:
        load_torch_vit({k: state[k] for k in keys[: keys.index("blocks.2.mlp.fc2.weight")]})
    assert "'norm.weight'" in one_line(info)
    del_one = {k: v for k, v in state.items() if k != "blocks.0.attn.qkv.bias"}
    with pytest.raises(InteropError) as info:
        load_torch_vit(del_one)
    assert "missing keys (1): blocks.0.attn.qkv.bias" in one_line(info)
    with pytest.raises(InteropError) as info:
        load_torch_vit({**state, "blocks.0.ls1.gamma": np.ones(192, np.float32)})
    assert "unexpected keys (1): blocks.0.ls1.gamma" in one_line(info)
    with pytest.raises(InteropError) as info:
        load_torch_vit(state, heads=5)
    assert "heads=5 does not divide the embedding dim 192" in one_line(info)
    with pytest.raises(InteropError) as info:
        load_torch_vit(state, heads=4)
    assert "vit_tiny (dim 192) has 3 heads" in one_line(info)
    with pytest.raises(InteropError) as info:
        load_torch_vit(numpy_state(small_vit(embed_dim=96, num_heads=3)))
    assert "embedding dim 96" in one_line(info)
    with pytest.raises(InteropError) as info:
        load_torch_vit(numpy_state(small_vit(global_pool="avg")))
    assert "'fc_norm.weight' and no 'norm.weight'" in one_line(info)
    with pytest.raises(InteropError) as info:
        load_torch_vit({k: v for k, v in state.items() if k != "pos_embed"})
    assert "but no 'pos_embed'" in one_line(info)
    with pytest.raises(InteropError) as info:
        load_torch_vit(state, img_size=36)
    assert "not a multiple of the weights' patch size 8" in one_line(info)
