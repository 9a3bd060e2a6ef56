"""The benchmark driver at its smallest scale: every experiment, every cell recorded, resume by skipping."""

import json
import os

import pytest

from ssl4eo_jax.benchmark import driver
from ssl4eo_jax.benchmark.figures import FIGURES
from ssl4eo_jax.benchmark.grid import expand
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.presets.files import load_config_module
from ssl4eo_jax.tensorboard_events import grid_tag

benchmark = load_config_module("benchmark")


def test_test_preset_runs_every_experiment_and_resumes(tmp_path):
    config = benchmark.get_config("test")
    config.data.cache_dir = str(tmp_path / "data")
    workdir = str(tmp_path / "bench")
    cells = expand(config)
    assert {c.experiment for c in cells} == {"methods", "augment", "fractions", "transfer"}

    first = driver.run(config, workdir)
    distinct = len({c.eval_id for c in cells})
    assert first["ran_cells"] == distinct and first["skipped_cells"] == len(cells) - distinct
    assert first["shared_cells"] == len(cells) - distinct  # the same evaluation in two experiments
    recorded = [(r["experiment"], r["eval_id"]) for r in first["cells"]]
    assert recorded == [(c.experiment, c.eval_id) for c in cells]
    for name in ("results.json", "results.md", *FIGURES.values()):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    markdown = open(os.path.join(workdir, "results.md")).read()
    for title in ("Fig. 24", "Fig. 25", "Fig. 26", "Fig. 27", "supervised (scratch)", "crop_only_0.5", "25 %"):
        assert title in markdown
    walls = {}
    for cell in cells:
        record = json.load(open(os.path.join(workdir, "cells", cell.eval_id, "cell.json")))
        assert record["seed"] == cell.seed and record["wall_seconds"] > 0
        assert record["config"]["eval"]["eval"]["label_fraction"] == cell.fraction
        assert 0 <= record["score"] <= 100
        if cell.pretrain:
            assert record["checkpoint"] == os.path.join(workdir, "pretrain", cell.pretrain_id)
            assert record["pretrain"]["config"]["aug"]["study"] == cell.aug
        else:
            assert record["checkpoint"] == "random"
        walls[cell.eval_id] = record["finished"], record["wall_seconds"]
    transfer = [r for r in first["cells"] if r["experiment"] == "transfer" and r["method"] == "barlow"][0]
    assert transfer["band_map"]["dropped"] == ["B10"]  # 12-band encoder, 13-band target
    # Two pre-trainings (the full pipeline shared by three experiments, one crop-only arm).
    assert sorted(os.listdir(os.path.join(workdir, "pretrain"))) == ["barlow_demo_ben_crop_only_0.5_s0",
                                                                     "barlow_demo_ben_full_s0"]

    again = driver.run(config, workdir)
    assert again["ran_cells"] == 0 and again["skipped_cells"] == len(cells)
    assert again["shared_cells"] == len(cells) - distinct
    for cell in cells:
        record = json.load(open(os.path.join(workdir, "cells", cell.eval_id, "cell.json")))
        assert (record["finished"], record["wall_seconds"]) == walls[cell.eval_id]

    # TensorBoard: the grid's cells, table and figures (rewritten, not duplicated, by the second run),
    # and each pre-training's own curves in its directory.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(workdir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    for r in again["cells"]:
        (point,) = events.Scalars(grid_tag(r))
        assert point.value == pytest.approx(r["score"])
    assert set(events.Tags()["images"]) == {os.path.splitext(name)[0] for name in FIGURES.values()}
    pretrain = EventAccumulator(os.path.join(workdir, "pretrain", "barlow_demo_ben_full_s0"))
    pretrain.Reload()
    assert "train/loss" in pretrain.Tags()["scalars"]


def test_demo_grid_has_the_review_methods_and_unknown_methods_are_refused():
    config = benchmark.get_config("demo")
    cells = expand(config)
    assert config.methods == ("mocov2", "simsiam", "swav", "barlow")
    assert {c.method for c in cells} == {"mocov2", "simsiam", "swav", "barlow", "random", "supervised"}
    methods_cells = [c for c in cells if c.experiment == "methods"]
    # 4 methods + 2 baselines on each of the two pre-training datasets, linear probe only.
    assert len(methods_cells) == 2 * (4 + 2)
    config.methods = ("mocov2", "no_such_method")
    with pytest.raises(ConfigError, match="'no_such_method' is unknown"):
        expand(config)
    assert {c.model for c in cells} == {"resnet18"}  # the review's methods pre-train ResNet-18s


def vit_grid(methods: tuple[str, ...], vit_method: str):
    """The test preset with ``vit_method`` switched to a tiny ViT (any method can be: the grid takes
    each cell's encoder from its method's config and the grid's overrides, not from the method's name)."""
    config = benchmark.get_config("test")
    config.methods = methods
    config.method_overrides[vit_method] = {**config.method_overrides.get(vit_method, {}),
                                           "model": {"name": "vit_tiny"}}
    config.model_overrides = {"vit_tiny": {"depth": 1, "patch_size": 8}}
    return config


def test_a_grid_with_a_vit_method_plans_its_cells_and_baselines_per_model():
    from ssl4eo_jax.bench.projection import encoder_forward_flops, grid_lines

    config = vit_grid(("barlow", "simsiam"), "simsiam")
    config.experiments.augment.enabled = config.experiments.fractions.enabled = False
    config.experiments.transfer.enabled = False
    cells = expand(config)
    assert [(c.method, c.model, c.eval_id) for c in cells] == [
        ("barlow", "resnet18", "barlow-demo_ben-full--linear-demo_ben-f1-s0"),
        ("simsiam", "vit_tiny", "simsiam-demo_ben-full--linear-demo_ben-f1-s0"),
        ("random", "resnet18", "random--linear-demo_ben-f1-s0"),  # the default model's ids are as before
        ("random", "vit_tiny", "random-vit_tiny--linear-demo_ben-f1-s0"),
        ("supervised", "resnet18", "supervised--finetune-demo_ben-f1-s0"),
        ("supervised", "vit_tiny", "supervised-vit_tiny--finetune-demo_ben-f1-s0"),
    ]
    barlow, simsiam, random_resnet, random_vit = cells[:4]
    vit = driver.pretrain_config(config, simsiam).model
    # config.model's width (a ResNet's) skips the ViT; config.model_overrides.vit_tiny applies to it.
    assert (vit.name, vit.depth, vit.patch_size, vit.img_size) == ("vit_tiny", 1, 8, 24) and "width" not in vit
    assert driver.pretrain_config(config, barlow).model.width == 16
    # The random-init ViT is the ViT method's encoder, its position embeddings at the evaluation's 32 px.
    assert driver.eval_config(config, random_vit, "random").model.to_dict() == {**vit.to_dict(), "img_size": 32}
    assert driver.eval_config(config, simsiam, "run").model.to_dict() == vit.to_dict()
    assert driver.eval_config(config, random_resnet, "random").model.name == "resnet18"
    # The projection counts each cell's own encoder: the ViT evaluations' forward passes are the ViT's.
    lines = {line.what: line for line in grid_lines(config, "float32")}
    assert set(lines) == {f"pre-train {c.pretrain_id}" for c in cells[:2]} | {f"evaluate {c.eval_id}" for c in cells}
    vit_forward = encoder_forward_flops(driver.eval_config(config, random_vit, "random").model, 32, 12, "float32")
    assert lines[f"evaluate {random_vit.eval_id}"].flops_per_step == pytest.approx(vit_forward)
    assert lines[f"evaluate {random_resnet.eval_id}"].flops_per_step != pytest.approx(vit_forward)


def test_a_tiny_vit_cell_runs_and_records_its_model(tmp_path):
    config = vit_grid(("barlow",), "barlow")
    for name in ("augment", "fractions", "transfer"):
        config.experiments[name].enabled = False
    config.experiments.methods.baselines = ("random",)
    config.data.cache_dir = str(tmp_path / "data")
    workdir = str(tmp_path / "bench")
    results = driver.run(config, workdir)
    assert [(r["method"], r["model"]) for r in results["cells"]] == [("barlow", "vit_tiny"), ("random", "vit_tiny")]
    for r in results["cells"]:
        record = json.load(open(os.path.join(workdir, "cells", r["eval_id"], "cell.json")))
        assert record["model"] == "vit_tiny" and 0 <= record["score"] <= 100
    pretrained = json.load(open(os.path.join(workdir, "pretrain", "barlow_demo_ben_full_s0", "config.json")))
    assert pretrained["model"]["name"] == "vit_tiny" and pretrained["model"]["depth"] == 1
    assert "encoder: vit_tiny." in open(os.path.join(workdir, "results.md")).read()


def test_review_preset_names_the_missing_dataset_and_its_converter(tmp_path):
    config = benchmark.get_config("review")
    with pytest.raises(DatasetError, match=r"config.data.dirs.bigearthnet is not set.*python -m data_prep.bigearthnet"):
        driver.run(config, str(tmp_path / "review"))
    config.data.dirs.bigearthnet = str(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"nowhere holds no manifest.json"):
        driver.run(config, str(tmp_path / "review"))
