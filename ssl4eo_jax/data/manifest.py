"""``manifest.json``: what a reader needs to decode a converted dataset, and what a user asks of it.

Every converter in ``data_prep/`` (and the demo generator) writes one into its output directory::

    {
      "format_version": 1,
      "dataset": "demo", "source": "...", "converter": "data_prep.demo", "converter_version": "1",
      "bands": ["B01", ..., "B12"], "dtype": "uint16", "shape": [48, 48, 13],
      "band_stats": {"split": "train", "mean": [...], "std": [...]},
      "classes": [...], "multi_label": false, "label_kinds": ["single", "multi"],
      "splits": {"train": {"size": 4000, "shards": ["train-00000-of-00004.array_record", ...],
                           "shard_info": [{"name": "train-00000-of-00004.array_record", "records": 1000,
                                           "bytes": 3276800, "sha256": "9f86d0..."}, ...],
                           "ids_file": "train-ids.txt"}, ...},
      "extra": {...}
    }

``shape`` is HWC for one date (THWC when a record holds several dates; such manifests say so with
``"time_axis": 0`` and ``"seasons": T``). ``multi_label`` says which label is the dataset's task;
``label_kinds`` which labels the records carry.

Each split lists its shard file names in ``shards`` (record order) and, since the shard checks were
added, the same shards in ``shard_info``: per shard its file ``name``, its ``records`` (count), its
size in ``bytes`` and the ``sha256`` (hex) of the file, recorded by ``ssl4eo_jax.data.writer`` when the
shard is written. The ``records`` add up to the split's ``size``. Opening a split
(``ssl4eo_jax.data.integrity.check_split``, every run) checks that each shard exists with its byte
size and record count; ``python -m data_prep.verify DIR`` also checks the checksums (and with
``--full`` decodes every record). Manifests written before ``shard_info`` still open (presence and
the total count are checked) with a warning that suggests ``data_prep.verify``; ``shard_info`` is
optional, so ``format_version`` stays 1 (readers that predate it ignore it).

The ``data_prep`` converters add provenance that readers may ignore: ``resampling`` (method, size,
which bands are bit-exact and which were resampled), ``split_method`` (official lists, metadata, or
a seeded stratified split), ``skipped``/``filtered`` (counts and the JSON file listing them), the
conversion ``options`` and ``notes`` (e.g. patches left out by exclusion lists).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from ssl4eo_jax.errors import UserError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class DatasetError(UserError):
    """A dataset directory or file that cannot be used, with the path and the fix in the message."""


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest records it: file name, record count, byte size, sha256 (hex)."""

    name: str
    records: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "records": self.records, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> "ShardInfo":
        return cls(str(entry["name"]), int(entry["records"]), int(entry["bytes"]), str(entry["sha256"]))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of one converted dataset directory."""

    root: str
    dataset: str
    bands: tuple[str, ...]
    dtype: str
    shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    multi_label: bool
    label_kinds: tuple[str, ...]
    splits: dict[str, dict[str, Any]]
    raw: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    def split_size(self, split: str) -> int:
        return int(self.split(split)["size"])

    def split(self, split: str) -> dict[str, Any]:
        if split not in self.splits:
            raise DatasetError(
                f"{os.path.join(self.root, MANIFEST_NAME)} has no split {split!r}; "
                f"it has {sorted(self.splits)}."
            )
        return self.splits[split]

    def shard_paths(self, split: str) -> list[str]:
        """Absolute paths of the split's shards; each must exist (``integrity.check_split`` checks more)."""
        paths = [os.path.join(self.root, name) for name in self.split(split)["shards"]]
        for path in paths:
            if not os.path.exists(path):
                raise DatasetError(
                    f"{path} is listed in {os.path.join(self.root, MANIFEST_NAME)} but missing; "
                    f"{self.repair_hint()}."
                )
        return paths

    def shard_info(self, split: str) -> list[ShardInfo] | None:
        """The recorded name, record count, byte size and sha256 of each shard of ``split``, in record
        order; ``None`` for manifests written before ``shard_info`` existed."""
        entries = self.split(split).get("shard_info")
        return None if entries is None else [ShardInfo.from_json(e) for e in entries]

    def repair_hint(self) -> str:
        """What fixes a missing or damaged shard (ends without a full stop)."""
        converter = self.raw.get("converter")
        who = f"the converter ({converter})" if converter else "the converter"
        return f"re-run {who} with the same command: it resumes and rewrites what is missing or damaged"

    def band_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean and std (float32), in the order of ``bands``."""
        return np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)


def _require(raw: dict[str, Any], key: str, path: str) -> Any:
    if key not in raw:
        raise DatasetError(f"{path} lacks the key {key!r}; was it written by an ssl4eo-jax converter?")
    return raw[key]


def load_manifest(root: str) -> Manifest:
    """Reads and validates ``<root>/manifest.json``."""
    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.isdir(root):
        raise DatasetError(f"Data directory {root} does not exist.")
    if not os.path.exists(path):
        raise DatasetError(
            f"{path} not found: {root} is not a converted dataset. Convert an archive first, e.g. "
            f"`python -m data_prep.eurosat --src <archive dir> --out {root}`, or leave the data "
            "directory unset to use the embedded demo data."
        )
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from e
    version = _require(raw, "format_version", path)
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has format_version {version}; this ssl4eo-jax reads version {FORMAT_VERSION}. "
            "Re-run the converter."
        )
    stats = _require(raw, "band_stats", path)
    bands = tuple(_require(raw, "bands", path))
    shape = tuple(int(s) for s in _require(raw, "shape", path))
    if shape[-1] != len(bands):
        raise DatasetError(f"{path}: shape {shape} has {shape[-1]} channels but {len(bands)} bands.")
    for key in ("mean", "std"):
        if len(stats[key]) != len(bands):
            raise DatasetError(f"{path}: band_stats.{key} has {len(stats[key])} values for {len(bands)} bands.")
    splits = _require(raw, "splits", path)
    if not isinstance(splits, dict):
        raise DatasetError(f"{path}: splits is not a mapping of split names; re-run the converter.")
    for name, entry in splits.items():
        _check_shard_info(entry, f"{path}: splits.{name}")
    return Manifest(
        root=root,
        dataset=str(_require(raw, "dataset", path)),
        bands=bands,
        dtype=str(_require(raw, "dtype", path)),
        shape=shape,
        mean=tuple(float(v) for v in stats["mean"]),
        std=tuple(float(v) for v in stats["std"]),
        classes=tuple(raw.get("classes", ())),
        multi_label=bool(raw.get("multi_label", False)),
        label_kinds=tuple(raw.get("label_kinds", ("multi",) if raw.get("multi_label") else ("single",))),
        splits=dict(splits),
        raw=raw,
    )


def _check_shard_info(entry: dict[str, Any], where: str) -> None:
    """``shard_info`` (when present) must describe exactly the ``shards``, and its counts the ``size``."""
    if "shard_info" not in entry:
        return
    try:
        infos = [ShardInfo.from_json(e) for e in entry["shard_info"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{where}.shard_info is malformed ({e!r}); re-run the converter.") from None
    if [i.name for i in infos] != list(entry.get("shards", [])):
        raise DatasetError(f"{where}.shard_info names other files than {where}.shards; re-run the converter.")
    total = sum(i.records for i in infos)
    if total != int(entry.get("size", -1)):
        raise DatasetError(
            f"{where}.shard_info counts {total} records but the split's size is {entry.get('size')}; "
            "re-run the converter."
        )


def write_manifest(root: str, manifest: dict[str, Any]) -> str:
    """Writes ``manifest.json`` atomically (temporary file, then rename); returns its path."""
    manifest = {"format_version": FORMAT_VERSION, **manifest}
    path = os.path.join(root, MANIFEST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path
