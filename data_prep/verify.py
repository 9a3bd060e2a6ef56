"""Checks a converted dataset against its manifest: ``python -m data_prep.verify DIR [--full] [--split NAME]``.

For every split (or only ``--split``) and every shard that ``manifest.json`` lists: the file exists
with its recorded byte size and record count, the counts add up to the split's size, and the file's
sha256 matches the one recorded when it was written. ``--full`` also reads and decodes every record
and checks it against the manifest: its pixels fill the manifest's shape in its dtype, its labels
are class indices of the manifest's classes, and its id is the one ``<split>-ids.txt`` lists there.

Prints a progress bar, then a table per split (shards, records, size, problems). Exits 0 when every
check passes; otherwise prints one line per problem (the shard, what was expected and what was
found, the fix) and exits 1. Manifests written before per-shard checksums were recorded are checked
as far as they allow (presence, total count and, with ``--full``, every record), with a note.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import numpy as np

from ssl4eo_jax.data.integrity import file_sha256, shard_problem
from ssl4eo_jax.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, load_manifest
from ssl4eo_jax.data.records import decode_header, decode_record
from ssl4eo_jax.progress import ProgressBar
from ssl4eo_jax.progress import progress as progress_bar
from ssl4eo_jax.errors import OneLineArgumentParser

READ_CHUNK = 256  # records read at once with --full
MAX_RECORD_PROBLEMS = 5  # per shard; the rest are counted in one line


@dataclasses.dataclass
class SplitReport:
    """What was checked of one split, and every problem found."""

    split: str
    shards: int = 0
    records: int = 0
    bytes: int = 0
    checksums: bool = True  # False when the manifest records none (an older converter)
    problems: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Shard:
    name: str
    path: str
    info: ShardInfo | None
    count: int | None = None  # records, when the file could be opened
    ok: bool = True  # passed the cheap checks and the checksum


def _check_files(manifest: Manifest, split: str, report: SplitReport, bar: ProgressBar) -> list[_Shard]:
    """Presence, size, record count and sha256 of every shard of ``split``; the total count."""
    entry = manifest.split(split)
    infos = manifest.shard_info(split)
    report.checksums = infos is not None
    shards = [_Shard(name, os.path.join(manifest.root, name), info)
              for name, info in zip(entry["shards"], infos or [None] * len(entry["shards"]))]
    report.shards = len(shards)
    fix = manifest.repair_hint()
    for shard in shards:
        shard.count, problem = shard_problem(manifest.root, shard.name, shard.info)
        if problem is not None:
            report.problems.append(f"{problem}; {fix}")
            shard.ok = False
            bar.update(shard.info.bytes if shard.info else 0)
            continue
        size = os.path.getsize(shard.path)
        report.bytes += size
        if shard.info is None:
            continue
        digest = file_sha256(shard.path, bar.update)
        if digest != shard.info.sha256:
            shard.ok = False
            report.problems.append(
                f"{shard.path}: sha256 {digest[:16]}... differs from the recorded {shard.info.sha256[:16]}... "
                "(damaged in place or replaced by another file of the same size); delete it and re-run the "
                "converter with the same command: it rewrites it")
    report.records = sum(s.count or 0 for s in shards)
    if all(s.count is not None for s in shards) and report.records != int(entry["size"]):
        report.problems.append(
            f"split {split!r}: the shards hold {report.records} records but {MANIFEST_NAME} says "
            f"{entry['size']}; {fix}")
    return shards


def _record_problem(manifest: Manifest, raw: bytes, expected_id: str | None) -> str | None:
    """Why one encoded record does not match the manifest, or ``None``."""
    k = manifest.num_classes
    try:
        header, _ = decode_header(raw)
        labels = [int(c) for c in header.get("labels", [])]
        label = int(header.get("label", -1))
        if any(not 0 <= c < k for c in labels):
            return f"multi-hot label classes {labels} outside the manifest's {k} classes"
        if not -1 <= label < k:
            return f"label {label} outside the manifest's {k} classes"
        item = decode_record(raw, np.dtype(manifest.dtype), manifest.shape, k)
    except Exception as e:  # noqa: BLE001 - whatever a malformed record makes the parser raise
        return f"cannot be decoded ({type(e).__name__}: {e})"
    if item["image"].shape != manifest.shape:
        return f"shape {item['image'].shape}, the manifest says {manifest.shape}"
    if expected_id is not None and item["id"] != expected_id:
        return f"id {item['id']!r}, the ids file lists {expected_id!r}"
    return None


def _read_ids(manifest: Manifest, split: str, report: SplitReport) -> list[str] | None:
    name = manifest.split(split).get("ids_file")
    if not name:
        return None
    path = os.path.join(manifest.root, name)
    if not os.path.isfile(path):
        report.problems.append(f"{path} (the ids of split {split!r}) is missing; {manifest.repair_hint()}")
        return None
    with open(path) as f:
        ids = f.read().splitlines()
    if len(ids) != manifest.split_size(split):
        report.problems.append(f"{path} lists {len(ids)} ids for the {manifest.split_size(split)} records of "
                               f"split {split!r}; {manifest.repair_hint()}")
        return None
    return ids


def _check_records(manifest: Manifest, split: str, shards: list[_Shard], report: SplitReport, bar: ProgressBar) -> None:
    """Reads and decodes every record of the readable shards of ``split`` (``--full``)."""
    from array_record.python.array_record_module import ArrayRecordReader

    ids = _read_ids(manifest, split, report)
    start = 0
    for shard in shards:
        expected = shard.info.records if shard.info else shard.count
        if expected is None:
            ids = None  # the ids of the later shards can no longer be lined up
        if shard.count is None:
            start += expected or 0
            continue
        count = shard.count
        found: list[str] = []
        reader = ArrayRecordReader(shard.path, "readahead_buffer_size:0")
        try:
            for lo in range(0, count, READ_CHUNK):
                hi = min(count, lo + READ_CHUNK)
                for offset, raw in _read_range(reader, lo, hi):
                    if isinstance(raw, Exception):
                        problem = f"cannot be read ({type(raw).__name__}: {str(raw) or 'no message'})"
                    else:
                        at = start + offset
                        problem = _record_problem(manifest, raw, ids[at] if ids and at < len(ids) else None)
                    if problem is not None:
                        found.append(f"{shard.path}: record {offset} (record {start + offset} of split "
                                     f"{split!r}) {problem}")
                bar.update(hi - lo)
        finally:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - already reported by the reads
                pass
        start += expected
        if found:
            shard.ok = False
            fix = ("delete it and re-run the converter with the same command: it rewrites it" if shard.info
                   else manifest.repair_hint())
            report.problems += [f"{line}; {fix}" for line in found[:MAX_RECORD_PROBLEMS]]
            if len(found) > MAX_RECORD_PROBLEMS:
                report.problems.append(f"{shard.path}: {len(found) - MAX_RECORD_PROBLEMS} more bad records")


def _read_range(reader: Any, lo: int, hi: int) -> list[tuple[int, bytes | Exception]]:
    """Records ``lo..hi-1`` of a shard; when the chunk fails, record by record to name the bad ones."""
    try:
        return list(zip(range(lo, hi), reader.read(lo, hi)))
    except Exception:  # noqa: BLE001 - find which records fail
        out: list[tuple[int, bytes | Exception]] = []
        for i in range(lo, hi):
            try:
                out.append((i, reader.read([i])[0]))
            except Exception as e:  # noqa: BLE001
                out.append((i, e))
        return out


def verify(root: str, splits: list[str] | None = None, full: bool = False, progress: bool = True
           ) -> tuple[Manifest, list[SplitReport]]:
    """Checks ``splits`` (default: all) of the dataset in ``root``; one report per split.

    Raises ``DatasetError`` only when the manifest itself cannot be read.
    """
    manifest = load_manifest(root)
    names = list(splits) if splits else list(manifest.splits)
    for name in names:
        manifest.split(name)  # an unknown split name is one clear error
    reports = {name: SplitReport(name) for name in names}
    total_bytes = sum(i.bytes for name in names for i in (manifest.shard_info(name) or []))
    shards = {}
    with progress_bar(total=total_bytes, desc="checksums", unit="B", unit_scale=True, disable=not progress) as bar:
        for name in names:
            shards[name] = _check_files(manifest, name, reports[name], bar)
    if full:
        total = sum(s.count or 0 for name in names for s in shards[name])
        with progress_bar(total=total, desc="records", unit="record", disable=not progress) as bar:
            for name in names:
                _check_records(manifest, name, shards[name], reports[name], bar)
    return manifest, [reports[name] for name in names]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def summary_table(reports: list[SplitReport]) -> str:
    """One row per split: shards, records, bytes, problems."""
    rows = [("split", "shards", "records", "size", "problems")]
    rows += [(r.split, str(r.shards), str(r.records), _size(r.bytes), str(len(r.problems))) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="python -m data_prep.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="a converted dataset directory (with manifest.json)")
    parser.add_argument("--full", action="store_true",
                        help="also read and decode every record (shape, dtype, labels, ids)")
    parser.add_argument("--split", action="append", default=None,
                        help="check only this split (repeat for several; default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    manifest, reports = verify(args.dir, args.split, full=args.full, progress=not args.no_progress)
    print(summary_table(reports))
    if not all(r.checksums for r in reports):
        print(f"note: {os.path.join(args.dir, MANIFEST_NAME)} records no per-shard sizes or checksums (an older "
              "converter wrote it); presence and counts" + (" and every record" if args.full else "")
              + " were checked. Re-run the converter with the same command to record them.")
    problems = [p for r in reports for p in r.problems]
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(problems)} problem(s) in {args.dir}.")
        sys.exit(1)
    checked = "checksums" if all(r.checksums for r in reports) else "counts"
    print(f"OK: {sum(r.records for r in reports)} records in {sum(r.shards for r in reports)} shards of "
          f"{manifest.dataset} ({checked}{' and every record' if args.full else ''} verified).")


if __name__ == "__main__":
    from data_prep.convert import main_guard

    main_guard(main)
