"""Where a config's data lives: the converted directory, or the embedded demo dataset."""

from __future__ import annotations

import logging
from typing import Any

import jax

from ssl4eo_jax.data.manifest import DatasetError, Manifest, load_manifest

# Converters in data_prep/ (python -m data_prep.<name> --src ARCHIVE --out DIR).
CONVERTERS = {
    "bigearthnet": "bigearthnet", "eurosat": "eurosat", "so2sat": "so2sat", "sen12ms": "sen12ms",
    "ssl4eo_s12": "ssl4eo_s12", "scenes": "scenes", "tfds": "tfds",
}


def resolve_data_dir(data_cfg: Any, progress: bool = True) -> str:
    """``config.data.dir`` if set; the cached demo dataset for ``name='demo'`` (or a demo variant such
    as ``demo_ben``, see ``ssl4eo_jax.data.demo.VARIANTS``); else a clear error."""
    if data_cfg.get("dir"):
        return str(data_cfg.dir)
    if data_cfg.name.startswith("demo"):
        from ssl4eo_jax.data.demo import ensure_demo_dataset

        return ensure_demo_dataset(
            cache_dir=data_cfg.get("cache_dir"), size=data_cfg.demo_size, seed=data_cfg.demo_seed,
            sizes={"train": data_cfg.demo_train, "val": data_cfg.demo_val, "test": data_cfg.demo_test},
            progress=progress and jax.process_index() == 0, name=data_cfg.name,
        )
    converter = CONVERTERS.get(data_cfg.name, "<dataset>")
    raise DatasetError(
        f"config.data.dir is not set, and dataset {data_cfg.name!r} has no embedded copy. Convert the "
        f"archive first: `python -m data_prep.{converter} --src <archive dir> --out <dir>`, then pass "
        f"--config.data.dir=<dir>."
    )


def load_dataset_manifest(data_cfg: Any) -> Manifest:
    """The manifest of the config's dataset (generating the demo data on first use)."""
    manifest = load_manifest(resolve_data_dir(data_cfg))
    if data_cfg.name not in ("custom", manifest.dataset):
        logging.warning("config.data.name is %r but %s holds dataset %r; using the data as found.",
                        data_cfg.name, manifest.root, manifest.dataset)
    return manifest
