"""Random access to one split of a converted dataset: ``open_split(dir, "train")``.

>>> ds = open_split("/data/eurosat_ms", "train")
>>> len(ds), ds.manifest.bands
>>> ds[0]["image"].shape, ds[0]["label"], ds[0]["id"]

The same object is the Grain data source of the training pipeline (it pickles into workers).
"""

from __future__ import annotations

import bisect
import os
from typing import Any

import grain
import numpy as np

from ssl4eo_jax.data.integrity import check_split
from ssl4eo_jax.data.manifest import DatasetError, Manifest, load_manifest
from ssl4eo_jax.data.records import decode_record


class SplitSource:
    """A ``len``/``[]`` view of one split; items are dicts of image, label, multi_hot and id.

    Opening checks every shard against the manifest (``integrity.check_split``); a record that
    cannot be read or decoded later raises ``DatasetError`` naming its shard file and its index there.
    """

    def __init__(self, manifest: Manifest, split: str):
        self.manifest = manifest
        self.split = split
        counts = check_split(manifest, split)
        self._paths = [os.path.join(manifest.root, name) for name in manifest.split(split)["shards"]]
        self._ends = list(np.cumsum(counts, dtype=np.int64).tolist())
        self._size = int(self._ends[-1]) if self._ends else 0
        # "path[0:n]": the counts are known, so Grain does not open every file a second time.
        self._records = (grain.sources.ArrayRecordDataSource([f"{p}[0:{n}]" for p, n in zip(self._paths, counts)])
                         if self._size else None)
        self._dtype = np.dtype(manifest.dtype)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.decode(self.raw(index), index)

    def locate(self, index: int) -> tuple[str, int]:
        """The shard file holding record ``index`` of the split, and the record's index in it."""
        shard = bisect.bisect_right(self._ends, index)
        return self._paths[shard], index - (self._ends[shard - 1] if shard else 0)

    def raw(self, index: int) -> bytes:
        """The encoded record (see ``ssl4eo_jax.data.records``)."""
        index = int(index)
        if not 0 <= index < self._size:
            raise IndexError(f"record {index} of split {self.split!r} (it has {self._size})")
        try:
            return self._records[index]
        except Exception as e:  # noqa: BLE001 - a library error reading a damaged shard
            raise self._record_error(index, "cannot be read", e) from e

    def decode(self, raw: bytes, index: int | None = None) -> dict[str, Any]:
        """Decodes one record; ``index`` (its index in the split) names it in the error."""
        try:
            return decode_record(raw, self._dtype, self.manifest.shape, self.manifest.num_classes)
        except Exception as e:  # noqa: BLE001 - a malformed record, whatever the parser raised
            raise self._record_error(index, "cannot be decoded", e) from e

    def _record_error(self, index: int | None, what: str, error: BaseException) -> DatasetError:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
        if index is None:
            where = f"A record of split {self.split!r} of {self.manifest.root}"
        else:
            path, offset = self.locate(index)
            where = f"Record {offset} of shard {path} (record {index} of split {self.split!r})"
        return DatasetError(f"{where} {what} ({type(error).__name__}: {detail}); the shard is damaged. "
                            f"`python -m data_prep.verify {self.manifest.root} --full` lists every damaged "
                            "shard and how to rewrite it.")

    def __repr__(self) -> str:
        return f"SplitSource({self.manifest.root!r}, {self.split!r}, {len(self)} patches)"


def open_split(root: str, split: str) -> SplitSource:
    """Opens one split of a dataset directory written by ``data_prep`` (or the demo generator)."""
    return SplitSource(load_manifest(root), split)
