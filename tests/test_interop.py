"""PyTorch interop: torchvision-layout ResNets convert exactly, checkpoints of every usual shape load,
and exports load strictly into torchvision/timm layouts and round-trip bit-exactly."""

import argparse
import json
import os
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from conftest import tiny_config  # noqa: E402
from ssl4eo_jax.bench.torch_resnet import ResNet, randomise  # noqa: E402

from ssl4eo_jax import train  # noqa: E402
from ssl4eo_jax.data import load_manifest  # noqa: E402
from ssl4eo_jax.errors import ConfigError  # noqa: E402
from ssl4eo_jax.evaluators import eval_preprocess  # noqa: E402
from ssl4eo_jax.export import export_checkpoint, main as export_main  # noqa: E402
from ssl4eo_jax.interop import (InteropError, load_encoder_variables, load_torch_resnet, restore_run,  # noqa: E402
                                state_dict_to_projector)
from ssl4eo_jax.interop.normalisation import from_spec  # noqa: E402
from ssl4eo_jax.interop.runs import find_step_dir  # noqa: E402
from ssl4eo_jax.methods.base import build_encoder  # noqa: E402
from ssl4eo_jax.models.heads import MLP  # noqa: E402

TOLERANCE = 1e-4  # max |ours - torch| relative to max |torch|


def max_rel_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


def features(model_cfg: dict, variables: dict, images_nhwc: np.ndarray) -> np.ndarray:
    encoder = build_encoder(ml_collections.ConfigDict(model_cfg))
    return np.asarray(jax.jit(lambda v, x: encoder.apply(v, x, train=False))(variables, images_nhwc))


def torch_features(model: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))).numpy()


def assert_same_tree(a: dict, b: dict) -> None:
    """Bit-exact equality of two variable trees (structure, dtype and values)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def numpy_state(model: torch.nn.Module) -> dict:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def rn18() -> ResNet:
    return randomise(ResNet("resnet18", 13, num_classes=10), seed=1)


@pytest.fixture(scope="module")
def rn18_reference(rn18):
    return load_torch_resnet(rn18.state_dict())


@pytest.fixture(scope="module")
def run_dir(demo_dir, tmp_path_factory) -> str:
    """A real 4-step Barlow Twins run (checkpoints at steps 2 and 4)."""
    workdir = str(tmp_path_factory.mktemp("interop_run"))
    train.run(tiny_config(demo_dir, **{"eval.enabled": False}), workdir)
    return workdir


# --- Exactness of the import ----------------------------------------------------------------------

@pytest.mark.parametrize("name,bands,size,stem", [
    ("resnet18", 13, 64, "imagenet"),
    ("resnet18", 12, 40, "imagenet"),
    ("resnet50", 13, 33, "imagenet"),
    ("resnet18", 10, 32, "small"),  # the So2Sat reference stem: 3x3/1 conv1 with a bias
])
def test_converted_forward_matches_torchvision(name, bands, size, stem):
    model = randomise(ResNet(name, bands, num_classes=7, stem=stem), seed=bands)
    x = np.random.default_rng(size).normal(size=(3, size, size, bands)).astype(np.float32)
    weights = load_torch_resnet(model.state_dict())
    assert weights.model_cfg["name"] == name and weights.model_cfg["stem"] == stem and weights.num_bands == bands
    assert (stem == "small") == any("conv1.bias" in note for note in weights.notes)
    ours = features(weights.model_cfg, weights.variables, x)
    with torch.no_grad():
        nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        theirs, logits = model.features(nchw).numpy(), model(nchw).numpy()
    assert ours.shape == theirs.shape == (3, 2048 if name == "resnet50" else 512)
    assert max_rel_error(ours, theirs) < TOLERANCE
    assert max_rel_error(ours @ weights.fc["kernel"] + weights.fc["bias"], logits) < TOLERANCE


# --- Checkpoint shapes: nesting, prefixes, heads, files -------------------------------------------

def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def test_nested_and_prefixed_checkpoints_convert_identically(rn18, rn18_reference):
    state = numpy_state(rn18)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    other = numpy_state(randomise(ResNet("resnet18", 13), seed=2))
    mlp_head = {"fc.0.weight": np.ones((512, 512), np.float32), "fc.0.bias": np.zeros(512, np.float32),
                "fc.2.weight": np.ones((128, 512), np.float32), "fc.2.bias": np.zeros(128, np.float32)}
    variants = {
        "torchgeo (plain, no fc)": (backbone, {}, ""),
        "torchvision with fc": (state, {}, ""),
        "SSL4EO-S12 MoCo": ({"epoch": 100, "arch": "resnet18", "state_dict": {
            **_prefixed({**backbone, **mlp_head}, "module.encoder_q."), **_prefixed(other, "module.encoder_k."),
            "module.queue": np.zeros((128, 16), np.float32), "module.queue_ptr": np.zeros(1, np.int64)}}, {},
            "module.encoder_q."),
        "DINO teacher": ({"teacher": {**_prefixed(backbone, "module.backbone."),
                                      "module.head.mlp.0.weight": np.ones((8, 512), np.float32)},
                          "student": _prefixed(other, "module.backbone."), "epoch": 3}, {}, "module.backbone."),
        "Lightning": ({"state_dict": {**_prefixed(backbone, "backbone."),
                                      "projection_head.layers.0.weight": np.ones((8, 512), np.float32)}}, {},
                      "backbone."),
        "BYOL online/target": ({**_prefixed(backbone, "online_network.encoder."),
                                **_prefixed(other, "target_network.encoder.")}, {}, "online_network.encoder."),
        "DataParallel": (_prefixed(state, "module."), {}, "module."),
        "encoder_q.": (_prefixed(backbone, "encoder_q."), {}, "encoder_q."),
        "encoder.": ({"model": _prefixed(backbone, "encoder.")}, {}, "encoder."),
        "model.": (_prefixed(backbone, "model."), {}, "model."),
        "explicit prefix": ({**_prefixed(backbone, "a."), **_prefixed(other, "b.")}, {"prefix": "a."}, "a."),
    }
    for label, (checkpoint, kwargs, prefix) in variants.items():
        weights = load_torch_resnet(checkpoint, **kwargs)
        assert weights.prefix == prefix, label
        assert_same_tree(weights.variables, rn18_reference.variables)
        assert (weights.fc is not None) == (label in ("torchvision with fc", "DataParallel")), label
    moco = load_torch_resnet(variants["SSL4EO-S12 MoCo"][0])
    assert any("module.encoder_k." in n for n in moco.notes) and any("fc.* (4)" in n for n in moco.notes)
    student = load_torch_resnet(variants["DINO teacher"][0], key="student")
    assert_same_tree(student.variables, load_torch_resnet(other).variables)


def test_pth_pt_and_safetensors_files_load_alike(rn18, rn18_reference, tmp_path):
    sd = rn18.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"state_dict": {"module.encoder_q." + k: v for k, v in sd.items()}}, tmp_path / "moco.pt")
    safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for name in ("plain.pth", "moco.pt", "w.safetensors"):
        assert_same_tree(load_torch_resnet(str(tmp_path / name)).variables, rn18_reference.variables)
    # Checkpoints that pickle other objects need an explicit opt-in.
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": sd}, tmp_path / "dino.pth")
    with pytest.raises(InteropError, match="weights_only=False"):
        load_torch_resnet(str(tmp_path / "dino.pth"))
    trusted = load_torch_resnet(str(tmp_path / "dino.pth"), weights_only=False)
    assert_same_tree(trusted.variables, rn18_reference.variables)


def test_unmatched_missing_and_misshaped_keys_are_listed(rn18):
    state = numpy_state(rn18)
    state["layer1.0.extra.weight"] = np.ones(3, np.float32)
    del state["layer4.1.bn2.running_var"]
    state["layer2.0.conv2.weight"] = np.ones((128, 64, 3, 3), np.float32)
    with pytest.raises(InteropError) as info:
        load_torch_resnet({"state_dict": _prefixed(state, "module.")})
    message = str(info.value)
    assert "resnet18 (13 bands" in message
    assert "unexpected keys (1): layer1.0.extra.weight" in message
    assert "missing keys (1): layer4.1.bn2.running_var" in message
    assert "layer2.0.conv2.weight: (128, 64, 3, 3) in the file, (128, 128, 3, 3) expected" in message


def test_unusable_checkpoints_get_clear_errors(rn18, tmp_path):
    state = numpy_state(rn18)
    with pytest.raises(InteropError, match=r"No ResNet weights .* keys: epoch, optimizer, head\.fc\.\* \(2\)\."):
        load_torch_resnet({"epoch": np.zeros(()), "optimizer": {"lr": 0.1}, "head.fc.weight": np.zeros((2, 3)),
                           "head.fc.bias": np.zeros(2)})
    with pytest.raises(InteropError, match=r"2 candidate ResNets under prefixes \['a\.', 'b\.'\]"):
        load_torch_resnet({**_prefixed(state, "a."), **_prefixed(state, "b.")})
    deeper = {**state, **{k.replace("layer3.1.", "layer3.2."): v for k, v in state.items()
                          if k.startswith("layer3.1.")}}
    with pytest.raises(InteropError, match=r"Unsupported ResNet: BasicBlock stages \(2, 2, 3, 2\)"):
        load_torch_resnet(deeper)
    with pytest.raises(InteropError, match="does not exist"):
        load_torch_resnet(str(tmp_path / "missing.pth"))


# --- Export: strict loading in torchvision/timm layouts, bit-exact round trip ---------------------

def _run_encoder_and_images(run_dir: str, size: int = 40):
    run = restore_run(run_dir)
    x = np.random.default_rng(0).normal(size=(4, size, size, run.num_bands)).astype(np.float32)
    return run, x


def _timm_stand_in():
    """timm's create_model for resnet18/50: torchvision's names; num_classes=0 makes fc an Identity."""
    def create_model(name: str, in_chans: int = 3, num_classes: int = 1000):
        model = ResNet(name, in_chans, num_classes=max(num_classes, 1))
        if num_classes == 0:
            model.fc = torch.nn.Identity()
        return model
    return types.SimpleNamespace(create_model=create_model)


def _torchvision_stand_in():
    return types.SimpleNamespace(models=types.SimpleNamespace(resnet18=lambda: ResNet("resnet18", 3),
                                                              resnet50=lambda: ResNet("resnet50", 3)))


@pytest.mark.parametrize("fmt,suffix", [("timm", ".safetensors"), ("torchvision", ".pth")])
def test_export_loads_strictly_and_matches(run_dir, tmp_path, capsys, monkeypatch, fmt, suffix):
    out = str(tmp_path / f"model{suffix}")
    export_main(["--checkpoint", run_dir, "--to", out, "--format", fmt, "--with-projector"])
    assert "Load it with:" in capsys.readouterr().out
    with open(tmp_path / "model.json") as f:
        sidecar = json.load(f)
    # Run the sidecar's recipe as written (it calls load_state_dict(strict=True)), with the
    # test-local torchvision-layout ResNet standing in for the timm/torchvision package.
    monkeypatch.setitem(sys.modules, fmt, _timm_stand_in() if fmt == "timm" else _torchvision_stand_in())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec("\n".join(sidecar["load"]), namespace)  # noqa: S102 - our own generated recipe
    model, projector = namespace["model"], namespace["projector"].eval()
    assert isinstance(model.fc, torch.nn.Identity) and not model.training

    run, x = _run_encoder_and_images(run_dir)
    ours = features(run.config["model"], run.encoder(), x)
    theirs = torch_features(model, x)
    assert max_rel_error(ours, theirs) < TOLERANCE
    mlp = MLP(tuple(run.config["barlow"]["projector"]), use_bias=False, hidden_norm=True, last_norm="none")
    variables = {"params": run.state["params"]["projector"], "batch_stats": run.state["batch_stats"]["projector"]}
    ours_z = np.asarray(mlp.apply(variables, ours, train=False))
    with torch.no_grad():
        theirs_z = projector(torch.from_numpy(np.array(ours))).numpy()
    assert max_rel_error(ours_z, theirs_z) < TOLERANCE


def test_export_import_round_trip_is_bit_exact(run_dir, tmp_path):
    out = str(tmp_path / "rt.safetensors")
    export_checkpoint(run_dir, out, "timm", with_projector=True)
    run = restore_run(run_dir)
    weights = load_torch_resnet(out)
    assert weights.model_cfg == run.config["model"] and weights.prefix == "" and weights.fc is None
    assert any("dropped 13 projection/classification head keys: projector.* (13)" in n for n in weights.notes)
    assert_same_tree(weights.variables, run.encoder())
    exported = safetensors_torch.load_file(out)
    projector_sd = {k[len("projector."):]: v.numpy() for k, v in exported.items() if k.startswith("projector.")}
    like = {"params": run.state["params"]["projector"], "batch_stats": run.state["batch_stats"]["projector"]}
    assert_same_tree(state_dict_to_projector(projector_sd, like), like)
    # Without --with-projector: exactly the timm resnet18(in_chans=13, num_classes=0) keys.
    export_checkpoint(run_dir, str(tmp_path / "enc.pt"), "torchvision")
    keys = set(torch.load(tmp_path / "enc.pt", weights_only=True))
    assert keys == {k for k in ResNet("resnet18", 13).state_dict() if not k.startswith("fc.")}


def test_sidecar_describes_bands_normalisation_and_source(run_dir, demo_dir, tmp_path):
    sidecar = export_checkpoint(os.path.join(run_dir, "checkpoints"), str(tmp_path / "m.safetensors"), "timm")
    with open(tmp_path / "m.json") as f:
        assert json.load(f) == sidecar
    manifest = load_manifest(demo_dir)
    assert sidecar["bands"] == list(manifest.bands) and sidecar["method"] == "barlow"
    assert sidecar["model"] == {"name": "resnet18", "stem": "imagenet", "width": 64, "in_chans": 13, "feature_dim": 512}
    norm = sidecar["normalisation"]
    assert norm["formula"] == "(x - mean) / std" and norm["preset"] == "pretrain_stats"
    np.testing.assert_allclose(norm["mean"], manifest.mean)
    np.testing.assert_allclose(norm["std"], manifest.std)
    assert sidecar["source"]["step"] == 4 and sidecar["source"]["workdir"] == os.path.abspath(run_dir)
    assert sidecar["projector"] is None
    assert "model = timm.create_model('resnet18', in_chans=13, num_classes=0)" in sidecar["load"]


def test_checkpoint_dirs_resolve_to_the_latest_or_given_step(run_dir, tmp_path, monkeypatch):
    latest = os.path.join(os.path.abspath(run_dir), "checkpoints", "4")
    assert find_step_dir(run_dir) == find_step_dir(os.path.join(run_dir, "checkpoints")) == latest
    assert restore_run(os.path.join(run_dir, "checkpoints", "2")).step == 2
    with pytest.raises(InteropError, match="No checkpoint under"):
        find_step_dir(str(tmp_path))
    headless = restore_run(run_dir)
    headless.state["params"].pop("projector")
    monkeypatch.setattr("ssl4eo_jax.export.restore_run", lambda _: headless)
    with pytest.raises(InteropError, match="'barlow' run at .* has no projector"):
        export_checkpoint(run_dir, str(tmp_path / "x.safetensors"), "timm", with_projector=True)


# --- What an evaluator's --config.checkpoint resolves to ------------------------------------------

def test_load_encoder_variables_for_our_runs(run_dir, demo_dir):
    manifest = load_manifest(demo_dir)
    model_cfg, variables, norm = load_encoder_variables(run_dir, expected_bands=list(manifest.bands))
    run = restore_run(run_dir)
    assert model_cfg == run.config["model"]
    assert_same_tree(variables, run.encoder())
    assert norm.preset == "dataset" and norm.mean is None
    mean, std = norm.arrays(*manifest.band_stats())
    np.testing.assert_array_equal(mean, manifest.band_stats()[0])
    with pytest.raises(ConfigError, match="takes 13 bands"):
        load_encoder_variables(run_dir, expected_bands=12)
    with pytest.raises(ConfigError, match="in this order"):
        load_encoder_variables(run_dir, expected_bands=list(reversed(manifest.bands)))


def test_load_encoder_variables_for_torch_files(rn18, run_dir, demo_dir, tmp_path):
    path = str(tmp_path / "resnet18_sentinel2_all_moco.pth")
    torch.save({k: v for k, v in rn18.state_dict().items() if not k.startswith("fc.")}, path)
    manifest = load_manifest(demo_dir)
    # SSL4EO-S12 / torchgeo weights: raw DN / 10000, and the 13 L1C bands in their order.
    model_cfg, variables, norm = load_encoder_variables(path, expected_bands=list(manifest.bands))
    assert norm.preset == "ssl4eo_s12" and norm.mean == (0.0,) * 13 and norm.std == (10000.0,) * 13
    dn = np.random.default_rng(3).integers(0, 6000, size=(2, 48, 48, 13)).astype(np.uint16)
    preprocess = eval_preprocess(*norm.arrays(*manifest.band_stats()), crop_fraction=1.0, size=48)
    ours = features(model_cfg, variables, np.asarray(preprocess(dn)))
    with torch.no_grad():
        rn18.fc, fc = torch.nn.Identity(), rn18.fc
        theirs = rn18(torch.from_numpy(dn.transpose(0, 3, 1, 2).astype(np.float32) / 10000))
        rn18.fc = fc
    assert max_rel_error(ours, theirs.numpy()) < TOLERANCE
    with pytest.raises(ConfigError, match="expects the bands"):
        load_encoder_variables(path, expected_bands=[b for b in manifest.bands if b != "B8A"] + ["B8A"])
    stats = load_encoder_variables(path, normalisation="ssl4eo_s12_stats")[2]
    assert stats.mean[:2] == (1612.9, 1397.6) and stats.std[-1] == 1142.9
    # An export's sidecar carries its pre-training normalisation and bands.
    export_checkpoint(run_dir, str(tmp_path / "ours.safetensors"), "timm")
    norm = load_encoder_variables(str(tmp_path / "ours.safetensors"), expected_bands=list(manifest.bands))[2]
    np.testing.assert_allclose(norm.arrays()[0], manifest.band_stats()[0])


def test_normalisation_specs():
    assert from_spec("ssl4eo_s12", 12).std == (10000.0,) * 12
    assert from_spec({"mean": [1, 2], "std": [3, 4]}, 2).arrays()[1].tolist() == [3.0, 4.0]
    with pytest.raises(ConfigError, match="Unknown normalisation"):
        from_spec("imagenet", 3)
    with pytest.raises(ConfigError, match="defined for 13 bands"):
        from_spec("ssl4eo_s12_stats", 12)
    with pytest.raises(ConfigError, match="needs the dataset's band statistics"):
        from_spec("dataset", 13).arrays()
