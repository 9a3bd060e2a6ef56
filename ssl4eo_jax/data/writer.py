"""Writes one split as sharded ArrayRecord files, in parallel, resumably and deterministically.

A split of input items (``0..count-1``, or any sequence of JSON-able items such as file names) is cut
into fixed ranges of ``records_per_shard`` items; shard ``k`` always holds the records of items
``[k * records_per_shard, (k + 1) * records_per_shard)`` in order, whatever the number of workers, so
the output is byte-identical from run to run. Each shard is
written to a temporary name with a sidecar ``<shard>.meta.json`` (patch ids, band statistics,
skipped items, and the shard's record count, byte size, sha256 and modification time) and renamed
only when complete: a re-run after a crash or Ctrl-C keeps the finished shards and writes only the
missing ones.

A re-run also rewrites damaged shards. A finished shard is kept only when its size equals the one in
its sidecar and, if its modification time changed since it was written (e.g. a copy), when its sha256
still matches too; an unchanged file is not hashed again. (A shard damaged in place without a change
of size or date, which only ``python -m data_prep.verify`` detects, is rewritten after deleting it.)
The manifest's ``shard_info`` comes from the sidecars.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import signal
import time
from typing import Any, Callable, Sequence

import numpy as np

from ssl4eo_jax.data.integrity import count_records, file_sha256
from ssl4eo_jax.data.manifest import DatasetError, ShardInfo
from ssl4eo_jax.data.stats import BandStats
from ssl4eo_jax.progress import progress as progress_bar

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
    shard_info: list[ShardInfo] = dataclasses.field(default_factory=list)

    def manifest_entry(self) -> dict:
        """The split's entry in ``manifest.json`` (layout in ``ssl4eo_jax.data.manifest``)."""
        entry: dict[str, Any] = {"size": self.size, "shards": self.shards}
        if self.shard_info:
            entry["shard_info"] = [info.to_json() for info in self.shard_info]
        entry["ids_file"] = self.ids_file
        return entry


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
            _injected_fault()
            ids.append(record.patch_id)
            if record.image is not None:
                stats.update(record.image)
    finally:
        writer.close()
    meta = {"shard": name, "ids": ids, "stats": stats.to_json(), "skipped": skipped, "filtered": filtered,
            **_file_facts(tmp, len(ids))}
    _write_meta(meta_path, meta)
    os.replace(tmp, path)  # a rename keeps the modification time recorded in the sidecar
    return meta


FAULT_ENV = "SSL4EO_JAX_KILL_AT_RECORD"
_written_in_process = 0


def _injected_fault() -> None:
    """Fault injection for the tests: ``SSL4EO_JAX_KILL_AT_RECORD=<n>`` kills the process with SIGKILL
    right after it wrote its n-th record (mid-shard, with the shard's temporary file open)."""
    global _written_in_process
    _written_in_process += 1
    if os.environ.get(FAULT_ENV) == str(_written_in_process):
        os.kill(os.getpid(), signal.SIGKILL)


def _file_facts(path: str, records: int) -> dict[str, Any]:
    """What the sidecar records of a finished shard file (``mtime_ns`` spares re-hashing it)."""
    st = os.stat(path)
    return {"records": records, "bytes": st.st_size, "sha256": file_sha256(path), "mtime_ns": st.st_mtime_ns}


def _write_meta(meta_path: str, meta: dict) -> None:
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f)
    os.replace(meta_path + ".tmp", meta_path)


def _load_complete_shard(out_dir: str, name: str) -> dict | None:
    """The sidecar of a finished, intact shard; ``None`` when the shard must be (re)written."""
    path = os.path.join(out_dir, name)
    meta_path = path + ".meta.json"
    if not (os.path.exists(path) and os.path.exists(meta_path)):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        ids = meta["ids"]
    except (OSError, ValueError, KeyError, TypeError):
        return _rewrite(path, "its sidecar .meta.json is unreadable")
    st = os.stat(path)
    if "sha256" in meta and "bytes" in meta:
        if st.st_size != meta["bytes"]:
            return _rewrite(path, f"{st.st_size} bytes, {meta['bytes']} when written")
        if st.st_mtime_ns == meta.get("mtime_ns"):
            return meta  # untouched since it was written
        if file_sha256(path) != meta["sha256"]:
            return _rewrite(path, "its sha256 differs from the one recorded when it was written")
        meta["mtime_ns"] = st.st_mtime_ns  # same contents (e.g. copied): trust the new date from now on
        _write_meta(meta_path, meta)
        return meta
    # A sidecar of an older writer: check and record the shard's facts now, once.
    try:
        records = count_records(path)
    except DatasetError as e:
        return _rewrite(path, str(e))
    if records != len(ids):
        return _rewrite(path, f"{records} records, {len(ids)} ids in its sidecar")
    meta.update(_file_facts(path, records))
    _write_meta(meta_path, meta)
    return meta


def _rewrite(path: str, why: str) -> None:
    logging.warning("Rewriting the damaged shard %s (%s).", path, why)
    return None


def _shard_info(meta: dict) -> ShardInfo:
    return ShardInfo(meta["shard"], int(meta["records"]), int(meta["bytes"]), str(meta["sha256"]))


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
    bar = progress_bar(total=count, desc=f"{split}", unit="patch", disable=not progress,
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
        shard_info=[_shard_info(metas[k]) for k in range(total_shards)],
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
