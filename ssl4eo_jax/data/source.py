"""Random access to one split of a converted dataset: ``open_split(dir, "train")``.

>>> ds = open_split("/data/eurosat_ms", "train")
>>> len(ds), ds.manifest.bands
>>> ds[0]["image"].shape, ds[0]["label"], ds[0]["id"]

The same object is the Grain data source of the training pipeline (it pickles into workers).
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from ssl4eo_jax.data.manifest import DatasetError, Manifest, load_manifest
from ssl4eo_jax.data.records import decode_record


class SplitSource:
    """A ``len``/``[]`` view of one split; items are dicts of image, label, multi_hot and id."""

    def __init__(self, manifest: Manifest, split: str):
        self.manifest = manifest
        self.split = split
        self._paths = manifest.shard_paths(split)
        self._records = grain.sources.ArrayRecordDataSource(self._paths)
        self._dtype = np.dtype(manifest.dtype)
        expected = manifest.split_size(split)
        if len(self._records) != expected:
            raise DatasetError(
                f"Split {split!r} of {manifest.root} holds {len(self._records)} records but its "
                f"manifest says {expected}; the shards are incomplete or from another conversion."
            )

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.decode(self._records[index])

    def raw(self, index: int) -> bytes:
        """The encoded record (see ``ssl4eo_jax.data.records``)."""
        return self._records[index]

    def decode(self, raw: bytes) -> dict[str, Any]:
        return decode_record(raw, self._dtype, self.manifest.shape, self.manifest.num_classes)

    def __repr__(self) -> str:
        return f"SplitSource({self.manifest.root!r}, {self.split!r}, {len(self)} patches)"


def open_split(root: str, split: str) -> SplitSource:
    """Opens one split of a dataset directory written by ``data_prep`` (or the demo generator)."""
    return SplitSource(load_manifest(root), split)
