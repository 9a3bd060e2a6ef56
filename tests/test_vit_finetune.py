"""ViT encoders in every evaluation protocol: the pooling choice, MAE's layer-wise lr decay
(``evaluators/layer_decay.py`` against a plain-Python transcription of MAE's ``param_groups_lrd``),
fine-tuning a tiny ViT, and the config errors."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssl4eo_jax import evaluate, sharding
from ssl4eo_jax.data import load_manifest
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.evaluators.encoders import input_bands, pooling, with_pool
from ssl4eo_jax.evaluators.finetune import Classifier, Task, train_classifier
from ssl4eo_jax.evaluators.layer_decay import layer_decay_optimizer, lr_scales, weight_decayed
from ssl4eo_jax.methods.base import build_encoder
from ssl4eo_jax.optim import make_optimizer
from ssl4eo_jax.presets.files import load_config_module
from ssl4eo_jax.presets.pretrain import apply_overrides
from ssl4eo_jax.report import read_metrics

finetune_config, knn_config, linear_config = (load_config_module(f"eval/{name}") for name in ("finetune", "knn", "linear"))

VIT = {"name": "vit_tiny", "patch_size": 8, "img_size": 32, "depth": 2, "pool": "token", "pos_embed": "learned",
       "weight_init": "xavier", "dtype": "float32"}
BANDS = 13


def _classifier_params(depth: int = 2) -> dict:
    encoder = build_encoder(ml_collections.ConfigDict({**VIT, "depth": depth}))
    return Classifier(encoder, 10).init(jax.random.key(0), jnp.zeros((1, 32, 32, BANDS)), train=False)["params"]


# --- MAE's util/lr_decay.py, transcribed (PyTorch parameter names and ndims) ----------------------


def get_layer_id_for_vit(name: str, num_layers: int) -> int:
    if name in ["cls_token", "pos_embed"]:
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    else:
        return num_layers


def param_groups_lrd(named_ndims, weight_decay=0.05, no_weight_decay_list=(), layer_decay=0.75, depth=12):
    """{name: (lr_scale, weight_decay)}, as the groups of ``param_groups_lrd`` give them."""
    num_layers = depth + 1
    layer_scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    out = {}
    for n, ndim in named_ndims:
        if ndim == 1 or n in no_weight_decay_list:
            this_decay = 0.0
        else:
            this_decay = weight_decay
        layer_id = get_layer_id_for_vit(n, num_layers)
        out[n] = (layer_scales[layer_id], this_decay)
    return out


def torch_name(path: tuple) -> str:
    """Our classifier's parameter path -> timm's name (``encoder/blocks_1/attn/qkv/kernel`` ->
    ``blocks.1.attn.qkv.weight``; the head is MAE's ``head``)."""
    names = [str(getattr(k, "key", k)) for k in path]
    names = names[1:] if names[0] == "encoder" else names
    out = []
    for n in names:
        if n.startswith("blocks_"):
            out += ["blocks", n.split("_")[1]]
        elif n == "patch_embed":
            out += ["patch_embed", "proj"]
        else:
            out.append({"kernel": "weight", "scale": "weight"}.get(n, n))
    return ".".join(out)


@pytest.mark.parametrize("decay", [0.65, 0.75])
def test_layer_decay_multipliers_and_weight_decay_are_param_groups_lrds(decay):
    params = _classifier_params(depth=2)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    expected = param_groups_lrd([(torch_name(p), x.ndim) for p, x in leaves], weight_decay=0.05,
                                no_weight_decay_list={"pos_embed", "cls_token", "dist_token"}, layer_decay=decay,
                                depth=2)
    scales = dict(zip((torch_name(p) for p, _ in leaves), jax.tree.leaves(lr_scales(params, 2, decay))))
    decayed = dict(zip((torch_name(p) for p, _ in leaves), jax.tree.leaves(weight_decayed(params))))
    assert set(scales) == set(expected) and len(expected) == len(leaves)
    for name, (scale, wd) in expected.items():
        assert scales[name] == pytest.approx(scale, rel=1e-12), name
        assert decayed[name] == (wd > 0), name
    assert scales["head.weight"] == scales["norm.weight"] == 1.0
    assert scales["blocks.1.mlp.fc2.weight"] == pytest.approx(decay)
    assert scales["cls_token"] == scales["patch_embed.proj.weight"] == pytest.approx(decay ** 3)


def test_layer_decay_scales_each_adamw_update_by_its_multiplier():
    """Two steps of the layer-decay optimizer == AdamW (decay masked as param_groups_lrd) with every
    parameter's update times its multiplier: PyTorch's per-group ``lr * lr_scale``."""
    params = _classifier_params(depth=2)
    cfg = ml_collections.ConfigDict({"name": "adamw", "lr": 1e-2, "weight_decay": 0.05, "schedule": "constant"})
    tx = layer_decay_optimizer(lambda c: make_optimizer(c, 10.0, 100)[0], cfg, depth=2, decay=0.5)
    ref = optax.adamw(1e-2, weight_decay=0.05, mask=weight_decayed)
    scales = lr_scales(params, 2, 0.5)
    state, ref_state = tx.init(params), ref.init(params)
    for i in range(2):
        grads = jax.tree.map(lambda p, k=i: jax.random.normal(jax.random.key(k), p.shape), params)
        updates, state = tx.update(grads, state, params)
        ref_updates, ref_state = ref.update(grads, ref_state, params)
        jax.tree.map(lambda u, r, s: np.testing.assert_allclose(u, r * s, rtol=1e-6, atol=1e-12),
                     updates, ref_updates, scales)


def test_encoder_helpers_read_bands_and_pooling():
    encoder = build_encoder(ml_collections.ConfigDict(VIT))
    variables = encoder.init(jax.random.key(0), jnp.zeros((1, 32, 32, BANDS)), train=False)
    assert input_bands(variables["params"]) == BANDS
    assert pooling(encoder) == "token" and pooling(with_pool(encoder, "mean")) == "mean"
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, BANDS))
    tokens = encoder.apply(variables, x, method=encoder.tokens)
    np.testing.assert_allclose(with_pool(encoder, "mean").apply(variables, x), tokens[:, 1:].mean(1), rtol=1e-5)
    resnet = build_encoder(ml_collections.ConfigDict({"name": "resnet18", "width": 8}))
    assert pooling(resnet) == "mean" and with_pool(resnet, "mean") is resnet
    with pytest.raises(ConfigError, match="config.eval.pool='token' is for ViT encoders"):
        with_pool(resnet, "token")
    with pytest.raises(ConfigError, match="config.eval.pool='cls'"):
        with_pool(encoder, "cls")


def test_finetuning_a_tiny_vit_with_layer_decay_lowers_its_loss(demo_dir, tmp_path):
    manifest = load_manifest(demo_dir)
    encoder = build_encoder(ml_collections.ConfigDict({**VIT, "pool": "mean"}))
    variables = encoder.init(jax.random.key(0), jnp.zeros((1, 32, 32, BANDS)), train=False)
    mean, std = manifest.band_stats()
    task = Task(encoder, {"params": variables["params"], "batch_stats": {}}, manifest.num_classes, False, mean, std)
    cfg = finetune_config.get_config("demo,recipe=mae").train
    cfg.batch, cfg.workers, cfg.log_every, cfg.checkpoint_every, cfg.steps = 32, 0, 1, 100, 12
    cfg.base_lr, cfg.optim.warmup_epochs = 0.02, 0.0  # lr 2.5e-3 at batch 32: a visible change in 12 steps
    workdir = str(tmp_path / "ft")
    tuned, _, summary = train_classifier(task, cfg, SplitSource(manifest, "train"), sharding.make_mesh(), workdir,
                                         {}, freeze_encoder=False)
    losses = [r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]
    print(f"\nViT fine-tuning losses: {np.round(losses, 4).tolist()}")
    assert summary["layer_decay"] == 0.65 and tuned["batch_stats"] == {}
    assert len(losses) == 12 and np.mean(losses[-3:]) < losses[0] - 0.1
    # Layer decay: the patch embedding (lr x 0.65^3) moved less, relative to its size, than the last block.
    before, after = variables["params"], tuned["params"]
    change = lambda *keys: _rel_change(_get(before, keys), _get(after, keys))  # noqa: E731
    assert change("patch_embed", "kernel") < change("blocks_1", "mlp", "fc2", "kernel")


def _get(tree: dict, keys: tuple) -> np.ndarray:
    for k in keys:
        tree = tree[k]
    return np.asarray(tree)


def _rel_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))

def _vit_eval_config(module, demo_dir: str, arg: str = "demo", **overrides):
    config = module.get_config(arg)
    config.checkpoint = "random"
    config.data.dir = demo_dir
    config.eval.batch = config.train.batch = 32
    config.eval.linear.epochs = 5
    config.train.workers = 0
    config.train.steps = 3
    apply_overrides(config, {"model.name": "vit_tiny", "model.patch_size": 8, "model.depth": 2,
                             "model.dtype": "float32", **overrides})
    return config


def test_every_protocol_runs_on_a_vit_and_records_its_pooling(demo_dir, tmp_path):
    runs = {
        "knn": (knn_config, "demo", {}),
        "linear": (linear_config, "demo", {"eval.pool": "mean"}),
        "reference": (linear_config, "demo", {"eval.protocol": "reference"}),
        "finetune": (finetune_config, "demo,recipe=mae", {}),
    }
    results = {name: evaluate.run(_vit_eval_config(module, demo_dir, arg, **o), str(tmp_path / name), progress=False)
               for name, (module, arg, o) in runs.items()}
    for name, r in results.items():
        for split in ("val", "test"):
            assert 0 <= r["metrics"][split]["oa"] <= 100, name
    assert {n: r["pool"] for n, r in results.items()} == {"knn": "token", "linear": "mean", "reference": "token",
                                                          "finetune": "mean"}
    assert results["knn"]["training"]["feature_dim"] == 192
    assert results["finetune"]["training"]["layer_decay"] == 0.65
    assert results["finetune"]["config"]["train"]["optim"]["name"] == "adamw"


def test_vit_config_errors_are_one_clear_line(demo_dir, tmp_path):
    resnet = finetune_config.get_config("demo")
    resnet.checkpoint, resnet.data.dir, resnet.train.layer_decay = "random", demo_dir, 0.65
    resnet.model.width, resnet.train.batch, resnet.eval.batch, resnet.train.workers = 8, 32, 32, 0
    with pytest.raises(ConfigError, match=r"config.train.layer_decay=0.65 is for ViT encoders"):
        evaluate.run(resnet, str(tmp_path / "ld"))
    bad = _vit_eval_config(finetune_config, demo_dir, **{"train.layer_decay": 1.5})
    with pytest.raises(ConfigError, match=r"config.train.layer_decay=1.5 must be in \(0, 1\]"):
        evaluate.run(bad, str(tmp_path / "ld2"))
    with pytest.raises(ConfigError, match="Unknown recipe 'moco'"):
        finetune_config.get_config("demo,recipe=moco")
    with pytest.raises(ConfigError, match="recipe=mae is a fine-tuning recipe"):
        knn_config.get_config("demo,recipe=mae")
