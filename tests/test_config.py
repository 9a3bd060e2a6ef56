"""Configs: command-line overrides, derived values that follow them, and clear errors."""

import os

import pytest
from absl import flags
from ml_collections import config_flags

from ssl4eo_jax.presets import pretrain as common
from ssl4eo_jax.presets.files import load_config_module

barlow = load_config_module("barlow")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*args: str):
    argv = ["prog", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def test_reference_defaults():
    config = barlow.get_config(None)
    assert config.data.name == "demo" and config.method == "barlow"
    assert config.barlow.lambd == 0.0051 and tuple(config.barlow.projector) == (2048, 2048, 2048)
    assert config.optim.name == "lars" and config.optim.lr == pytest.approx(0.1)
    assert config.optim.lr_biases == pytest.approx(0.0048) and config.optim.weight_decay == 1e-6
    ben = barlow.get_config("bigearthnet")
    assert ben.aug.crop_size == 112 and ben.train.epochs == 100 and ben.optim.warmup_epochs == 0


def test_overrides_from_the_command_line_and_derived_values_follow():
    path = os.path.join(ROOT, "configs", "barlow.py")
    config = _parse(f"--config={path}:bigearthnet", "--config.data.global_batch=512", "--config.optim.base_lr=0.2",
                    "--config.aug.crop_size=96", "--config.data.dir=/data/ben")
    assert config.optim.lr == pytest.approx(0.4)  # 0.2 * 512 / 256
    assert config.optim.lr_biases == pytest.approx(0.0048 * 2)
    assert config.eval.size == 96 and config.data.dir == "/data/ben"


def test_unknown_keys_and_presets_are_refused():
    path = os.path.join(ROOT, "configs", "barlow.py")
    with pytest.raises(Exception, match="lrr"):
        _parse(f"--config={path}", "--config.optim.lrr=1.0")
    with pytest.raises(ValueError, match="Unknown dataset preset 'mars'.*bigearthnet.*demo"):
        barlow.get_config("mars")
    assert set(common.DATASET_PRESETS) >= {"demo", "bigearthnet", "eurosat", "so2sat", "sen12ms"}


def test_named_dataset_without_a_directory_says_how_to_convert():
    from ssl4eo_jax.data.datasets import resolve_data_dir
    from ssl4eo_jax.data.manifest import DatasetError

    config = barlow.get_config("eurosat")
    with pytest.raises(DatasetError, match="python -m data_prep.eurosat --src .* --config.data.dir"):
        resolve_data_dir(config.data)
