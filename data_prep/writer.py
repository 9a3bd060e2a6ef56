"""Writes one split as sharded ArrayRecord files, in parallel, resumably and deterministically.

A split of input items (``0..count-1``, or any sequence of JSON-able items such as file names) is cut
into fixed ranges of ``records_per_shard`` items; shard ``k`` always holds the records of items
``[k * records_per_shard, (k + 1) * records_per_shard)`` in order, whatever the number of workers, so
the output is byte-identical from run to run. Each shard is
written to a temporary name with a sidecar ``<shard>.meta.json`` (patch ids, band statistics,
skipped items) and renamed only when complete: a re-run after a crash or Ctrl-C keeps the finished
shards and writes only the missing ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import signal
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from data_prep.stats import BandStats

# group_size:1 for Grain's random access. zstd level 1: on 120 px 13-band uint16 patches it reads
# 1.6x faster than ArrayRecord's default zstd level and stores within 2 % of its size; snappy and
# uncompressed read faster still but store ~20 % more (docs/benchmarks.md).
SHARD_OPTIONS = "group_size:1,zstd:1"


class BadPatch(Exception):
    """An input item that cannot be converted; the message names the file and the problem."""


class Filtered(Exception):
    """An input item left out on purpose (e.g. too cloudy); counted, never an error."""


@dataclasses.dataclass
class PatchRecord:
    """One converted item: the encoded record, its id and the image (for the band statistics)."""

    data: bytes
    patch_id: str
    image: np.ndarray | None = None


RecordFn = Callable[[Any], PatchRecord]


@dataclasses.dataclass
class SplitSummary:
    split: str
    shards: list[str]
    ids_file: str
    size: int
    stats: BandStats
    skipped: list[dict[str, Any]]
    written_now: int
    seconds: float
    filtered: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def manifest_entry(self) -> dict:
        return {"size": self.size, "shards": self.shards, "ids_file": self.ids_file}


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.array_record"


def _write_shard(
    make_record: RecordFn, out_dir: str, split: str, total_shards: int, items: Sequence[Any],
    shard_index: int, skip_bad: bool, on_record: Callable[[], None] | None = None,
) -> dict:
    """Writes one shard (temporary name, then rename) and returns its sidecar contents."""
    from array_record.python.array_record_module import ArrayRecordWriter

    name = shard_name(split, shard_index, total_shards)
    path = os.path.join(out_dir, name)
    meta_path = path + ".meta.json"
    tmp = path + ".tmp"
    writer = ArrayRecordWriter(tmp, SHARD_OPTIONS)
    ids, skipped, filtered, stats = [], [], [], BandStats()
    try:
        for item in items:
            try:
                record = make_record(item)
            except Filtered as e:
                filtered.append({"item": item, "reason": str(e)})
                continue
            except BadPatch as e:
                if not skip_bad:
                    raise
                skipped.append({"item": item, "reason": str(e)})
                continue
            finally:
                if on_record is not None:
                    on_record()
            writer.write(record.data)
            ids.append(record.patch_id)
            if record.image is not None:
                stats.update(record.image)
    finally:
        writer.close()
    meta = {"shard": name, "ids": ids, "stats": stats.to_json(), "skipped": skipped, "filtered": filtered}
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f)
    os.replace(meta_path + ".tmp", meta_path)
    os.replace(tmp, path)
    return meta


def _load_complete_shard(out_dir: str, name: str) -> dict | None:
    path = os.path.join(out_dir, name)
    meta_path = path + ".meta.json"
    if not (os.path.exists(path) and os.path.exists(meta_path)):
        return None
    with open(meta_path) as f:
        return json.load(f)


def write_split(
    out_dir: str,
    split: str,
    count: int | Sequence[Any],
    make_record: RecordFn,
    records_per_shard: int = 1000,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
) -> SplitSummary:
    """Converts the items of one split with ``make_record`` into ArrayRecord shards.

    ``count`` is either a number of items (``make_record`` gets ``0..count-1``) or the sequence of
    items itself (file names, tuples; JSON-able, as they are listed in the skipped/filtered lists).
    ``make_record`` must be picklable (a module-level function or a ``functools.partial``) when
    ``workers > 1``. It raises ``BadPatch`` for an item that cannot be converted: the conversion
    stops with that message unless ``skip_bad``, which records the item and reason instead. It raises
    ``Filtered`` for an item left out on purpose (counted, with the reason, in the sidecars).
    """
    items: Sequence[Any] = range(count) if isinstance(count, int) else count
    count = len(items)
    os.makedirs(out_dir, exist_ok=True)
    began = time.time()
    total_shards = max(1, -(-count // records_per_shard))
    ranges = [(k, k * records_per_shard, min(count, (k + 1) * records_per_shard)) for k in range(total_shards)]
    metas: dict[int, dict] = {}
    todo = []
    for k, start, stop in ranges:
        meta = _load_complete_shard(out_dir, shard_name(split, k, total_shards))
        if meta is None:
            todo.append((k, items[start:stop]))
        else:
            metas[k] = meta
    bar = tqdm(total=count, desc=f"{split}", unit="patch", disable=not progress,
               initial=count - sum(len(chunk) for _, chunk in todo))
    job = functools.partial(_shard_job, make_record, out_dir, split, total_shards, skip_bad)
    written_now = 0
    if workers > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(todo)), initializer=_ignore_sigint) as pool:
            for k, meta in pool.imap_unordered(job, todo):
                metas[k] = meta
                written_now += len(meta["ids"])
                bar.update(ranges[k][2] - ranges[k][1])
    else:
        for k, chunk in todo:
            metas[k] = _write_shard(make_record, out_dir, split, total_shards, chunk, k, skip_bad,
                                    on_record=lambda: bar.update(1))
            written_now += len(metas[k]["ids"])
    bar.close()

    stats, ids, skipped, filtered = BandStats(), [], [], []
    for k in range(total_shards):
        stats.merge(BandStats.from_json(metas[k]["stats"]))
        ids.extend(metas[k]["ids"])
        skipped.extend(metas[k]["skipped"])
        filtered.extend(metas[k].get("filtered", []))
    ids_file = f"{split}-ids.txt"
    with open(os.path.join(out_dir, ids_file + ".tmp"), "w") as f:
        f.writelines(f"{i}\n" for i in ids)
    os.replace(os.path.join(out_dir, ids_file + ".tmp"), os.path.join(out_dir, ids_file))
    return SplitSummary(
        split=split,
        shards=[shard_name(split, k, total_shards) for k in range(total_shards)],
        ids_file=ids_file,
        size=len(ids),
        stats=stats,
        skipped=skipped,
        written_now=written_now,
        seconds=time.time() - began,
        filtered=filtered,
    )


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the main process, which stops them (no traceback from each worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _shard_job(make_record: RecordFn, out_dir: str, split: str, total: int, skip_bad: bool,
               job: tuple[int, Sequence[Any]]) -> tuple[int, dict]:
    k, chunk = job
    return k, _write_shard(make_record, out_dir, split, total, chunk, k, skip_bad)


def band_stats_entry(stats: BandStats, split: str = "train") -> dict:
    """The manifest's ``band_stats`` from accumulated statistics."""
    if stats.count == 0:
        raise ValueError(f"No pixels were accumulated for the {split!r} split's band statistics.")
    return {"split": split, "mean": stats.mean.tolist(), "std": stats.std.tolist()}
