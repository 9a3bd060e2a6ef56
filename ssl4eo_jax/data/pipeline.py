"""The Grain input pipeline: shuffled, repeated, sharded by process, batched, prefetched to devices.

Training stream (one global order, whatever the topology)::

    source (ArrayRecord shards) -> seed/shuffle (reshuffled every epoch) -> repeat
      -> tag every element with its global stream index -> [process_index::process_count]
      -> decode -> batch(global_batch / process_count) -> worker processes -> global jax.Arrays

Element ``j`` of step ``s``'s global batch is stream element ``s * global_batch + j`` on one process;
with P processes each takes every P-th element, and the stream index travels with the example so
that its augmentation (keyed by that index) is identical on any topology.

Evaluation stream: each split in file order, every process a strided slice, padded with masked
dummies so that all processes run the same number of equally sized batches.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from typing import Any, Iterator

import grain
import jax
import numpy as np

from ssl4eo_jax import sharding
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.data.worker_exit import exit_with_parent

TRAIN_KEYS = ("image", "label", "multi_hot", "index")


def _absl_flags_ready() -> None:
    """Grain's multiprocessing reads absl flags; mark them parsed when not run under absl.app."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _quiet_resource_tracker() -> None:
    """Python < 3.13 registers shared memory *attached* by the consumer with its resource tracker,
    which then reports the segments that Grain's workers own (and unlink) as "leaked" at exit.
    /dev/shm stays clean; the tracker process inherits this filter and stops the false alarm."""
    option = "ignore:resource_tracker:UserWarning"
    if sys.version_info < (3, 13) and option not in sys.warnoptions:
        sys.warnoptions.append(option)


class _Tag(grain.transforms.MapWithIndex):
    def map_with_index(self, index: int, element: tuple[int, bytes]) -> tuple[int, tuple[int, bytes]]:
        return index, element


class _DecodeTrain(grain.transforms.Map):
    """Record -> arrays. float64 images (So2Sat kept bit-exact on disk) travel as float32: the
    device computes in float32 anyway, and it halves the host-to-device traffic."""

    def __init__(self, source: SplitSource):
        self._source = source

    def map(self, element: tuple[int, tuple[int, bytes]]) -> dict[str, Any]:
        index, (record, raw) = element
        ex = self._source.decode(raw, record)  # a bad record's error names its shard and index there
        image = ex["image"].astype(np.float32) if ex["image"].dtype == np.float64 else ex["image"]
        return {"image": image, "label": ex["label"], "multi_hot": ex["multi_hot"], "index": np.int32(index)}


class _RawSource:
    """The split's encoded records with their index in the split (decoding happens in the
    pipeline's workers; the index names a record that fails to decode)."""

    def __init__(self, source: SplitSource):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> tuple[int, bytes]:
        return index, self._source.raw(index)


def train_dataset(source: SplitSource, global_batch: int, seed: int) -> grain.MapDataset:
    """The infinite training stream of this process, as local batches."""
    n = len(source)
    if n < global_batch:
        raise DatasetError(
            f"The {source.split!r} split of {source.manifest.root} has {n} patches, fewer than one "
            f"global batch ({global_batch}); lower config.data.global_batch."
        )
    local = sharding.local_batch_size(global_batch)
    ds = grain.MapDataset.source(_RawSource(source)).seed(seed).shuffle().repeat()
    ds = ds.map_with_index(_Tag())
    ds = ds[jax.process_index() :: jax.process_count()]
    return ds.map(_DecodeTrain(source)).batch(local, drop_remainder=True)


def steps_per_epoch(source: SplitSource, global_batch: int) -> float:
    """Steps per pass over the split: ``len / global_batch``, fractional when the batch does not
    divide the split. The stream is one reshuffled epoch after another, so a batch may straddle
    two epochs; no example is dropped or repeated within an epoch."""
    return len(source) / global_batch


class DeviceIterator:
    """Global device batches from a Grain iterator, ``prefetch`` steps ahead.

    ``get_state``/``set_state`` give the Grain state *after the last batch handed out*, so a
    checkpoint taken after step s resumes exactly at step s + 1 even though later batches were
    already prefetched. It plugs into ``grain.checkpoint.CheckpointSave``/``CheckpointRestore``.
    """

    def __init__(self, dataset: grain.MapDataset, mesh: jax.sharding.Mesh, workers: int, threads: int = 2,
                 prefetch: int = 2, keys: tuple[str, ...] = TRAIN_KEYS):
        _absl_flags_ready()
        _quiet_resource_tracker()
        it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
        if workers > 0:
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2),
                                      worker_init_fn=exit_with_parent)
        self._iter = iter(it_ds)
        self._mesh = mesh
        self._keys = keys
        self._prefetch = prefetch
        self._buffer: list[tuple[dict[str, jax.Array], Any]] = []
        self._state = self._iter.get_state()

    def _fill(self) -> None:
        while len(self._buffer) < self._prefetch:
            host = next(self._iter)
            batch = sharding.to_global({k: host[k] for k in self._keys}, self._mesh)
            self._buffer.append((batch, self._iter.get_state()))

    def __iter__(self) -> "DeviceIterator":
        return self

    def __next__(self) -> dict[str, jax.Array]:
        self._fill()
        batch, self._state = self._buffer.pop(0)
        self._fill()
        return batch

    def get_state(self) -> bytes:
        return json.dumps(self._state).encode()

    def set_state(self, state: bytes) -> None:
        self._buffer.clear()
        self._state = json.loads(state.decode())
        self._iter.set_state(self._state)

    def start_prefetch(self) -> None:
        """Called by Grain's checkpoint handler after a restore; prefetching starts lazily."""

    def close(self) -> None:
        """Stops Grain's workers and releases their shared memory (call before exiting)."""
        self._buffer.clear()
        if self._iter is not None:
            close = getattr(self._iter, "close", None)
            if close is not None:
                close()
            self._iter = None
            gc.collect()  # frees prefetched shared-memory arrays while the interpreter is intact


def eval_batches(source: SplitSource, global_batch: int, mesh: jax.sharding.Mesh, threads: int = 2
                 ) -> Iterator[dict[str, jax.Array]]:
    """Every example of a split once, as global batches with a ``mask`` (0 for padding)."""
    n = len(source)
    count, index = jax.process_count(), jax.process_index()
    local = sharding.local_batch_size(global_batch)
    per_process = -(-n // count)
    n_batches = -(-per_process // local)
    ds = grain.MapDataset.source(_RawSource(source))[index::count]
    ds = ds.map_with_index(_Tag()).map(_DecodeTrain(source))
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * local)))
    shape, dtype = source.manifest.shape, np.dtype(source.manifest.dtype)
    dtype = np.dtype(np.float32) if dtype == np.float64 else dtype
    k = source.manifest.num_classes
    for _ in range(n_batches):
        items = []
        for _ in range(local):
            try:
                items.append(next(it))
            except StopIteration:
                break
        pad = local - len(items)
        host = {
            "image": np.stack([e["image"] for e in items] + [np.zeros(shape, dtype)] * pad),
            "label": np.asarray([e["label"] for e in items] + [-1] * pad, np.int32),
            "multi_hot": np.stack([e["multi_hot"] for e in items] + [np.zeros((k,), np.float32)] * pad),
            "mask": np.asarray([1.0] * len(items) + [0.0] * pad, np.float32),
        }
        yield sharding.to_global(host, mesh)
    logging.debug("Read %d examples of split %s.", n, source.split)
