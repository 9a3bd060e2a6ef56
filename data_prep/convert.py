"""What every converter shares: its common CLI flags, resume safety, the split loop and the summary.

A converter lists its input items per split (cheap, in the main process), then hands a ``Job`` to
``run``: the shards are written by ``ssl4eo_jax.data.writer`` (parallel, resumable, deterministic), the band
statistics come from the train split (or ``--stats-split``), and ``manifest.json`` is written last. ``conversion.json``
pins the options and item lists of a conversion, so a re-run with the same command resumes it while
a re-run with different options into the same ``--out`` stops instead of mixing two datasets.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from ssl4eo_jax.data.manifest import DatasetError, write_manifest
from ssl4eo_jax.data.writer import BadPatch, PatchRecord, band_stats_entry, write_split
from ssl4eo_jax.errors import OneLineArgumentParser, run_guarded

FINGERPRINT_NAME = "conversion.json"
SKIPPED_NAME = "skipped.json"
FILTERED_NAME = "filtered.json"
LOCK_NAME = "conversion.lock"
SHARD_TARGET_BYTES = 128 << 20  # uncompressed image bytes per shard when --records-per-shard is unset


def converter_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose help shows the converter's docstring, with the flags every converter has."""
    return add_common_args(OneLineArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter))


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--src --out --workers --skip-bad --records-per-shard --stats-split --no-progress``."""
    parser.add_argument("--src", required=True, help="the archive as downloaded and extracted")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    parser.add_argument("--out", required=True, help="output directory (re-run the same command to resume)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes, each writing whole shards (default: all CPUs)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable or inconsistent patches (listed in skipped.json) instead of stopping")
    parser.add_argument("--records-per-shard", type=int, default=None,
                        help=f"patches per shard (default: about {SHARD_TARGET_BYTES >> 20} MiB of pixels)")
    parser.add_argument("--stats-split", default="train",
                        help="split whose pixels give the manifest's band mean/std (default: train)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


class Problems:
    """Problems found while listing the archive: an error at once, or recorded with ``--skip-bad``."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.entries: list[dict[str, Any]] = []

    def report(self, split: str, item: Any, reason: str) -> None:
        if not self.skip_bad:
            raise BadPatch(reason)
        self.entries.append({"split": split, "item": item, "reason": reason})


@dataclasses.dataclass
class Job:
    """One conversion: items per split (in record order), the record function, the manifest fields."""

    dataset: str
    converter: str
    version: str
    splits: dict[str, Sequence[Any]]
    make_record: Callable[[Any], PatchRecord]
    manifest: dict[str, Any]  # bands, dtype, shape, classes, multi_label, label_kinds, source, ...
    options: dict[str, Any]  # everything that changes the output, pinned in conversion.json
    problems: Problems | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. counts of excluded patches


def auto_records_per_shard(shape: Sequence[int], dtype: str) -> int:
    record_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return int(np.clip(SHARD_TARGET_BYTES // max(record_bytes, 1), 16, 4096))


def _digest(items: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(items), separators=(",", ":")).encode()).hexdigest()


def _check_fingerprint(out: str, fingerprint: dict[str, Any]) -> None:
    """Writes ``conversion.json``, or checks that the one already in ``out`` is the same conversion."""
    path = os.path.join(out, FINGERPRINT_NAME)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != fingerprint:
            keys = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise DatasetError(
                f"{out} holds a conversion with other settings or inputs (differs in: {', '.join(keys)}; "
                f"see {path}). Use a new --out, or delete {out} to start over."
            )
        return
    os.makedirs(out, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(fingerprint, f, indent=2)
    os.replace(path + ".tmp", path)


def _write_json(out: str, name: str, data: Any) -> None:
    with open(os.path.join(out, name + ".tmp"), "w") as f:
        json.dump(data, f, indent=1)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))


def run(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    """Writes every split of ``job`` into ``args.out`` and the manifest; returns the manifest."""
    out = args.out
    splits = {name: items for name, items in job.splits.items() if len(items)}
    stats_split = args.stats_split
    if stats_split not in splits:
        raise DatasetError(
            f"No patch of {args.src} falls into the {stats_split} split, whose band statistics the manifest "
            f"needs (split sizes: { {k: len(v) for k, v in job.splits.items()} }); choose another with --stats-split."
        )
    per_shard = args.records_per_shard or auto_records_per_shard(job.manifest["shape"], job.manifest["dtype"])
    os.makedirs(out, exist_ok=True)
    with _exclusive(out):
        return _run_locked(job, args, splits, stats_split, per_shard)


@contextlib.contextmanager
def _exclusive(out: str):
    """Holds ``<out>/conversion.lock`` so that two runs never write into one directory at once."""
    import fcntl

    with open(os.path.join(out, LOCK_NAME), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DatasetError(f"Another conversion is writing into {out}; wait for it or stop it first.") from None
        yield


def _run_locked(job: Job, args: argparse.Namespace, splits: dict, stats_split: str, per_shard: int) -> dict[str, Any]:
    out = args.out
    _check_fingerprint(out, {
        "converter": job.converter, "converter_version": job.version, "options": job.options,
        "records_per_shard": per_shard, "stats_split": stats_split,
        "splits": {name: {"count": len(items), "sha256": _digest(items)} for name, items in splits.items()},
    })
    began = time.time()
    summaries = {}
    for name, items in splits.items():
        summaries[name] = write_split(
            out, name, items, job.make_record, records_per_shard=per_shard, workers=args.workers,
            skip_bad=args.skip_bad, progress=not args.no_progress,
        )
    if summaries[stats_split].stats.count == 0:
        raise DatasetError(f"Every patch of the {stats_split} split was skipped or filtered; see {out}/{SKIPPED_NAME}.")
    skipped = list(job.problems.entries if job.problems else [])
    skipped += [{"split": s.split, **e} for s in summaries.values() for e in s.skipped]
    filtered = [{"split": s.split, **e} for s in summaries.values() for e in s.filtered]
    _write_json(out, SKIPPED_NAME, skipped)
    if filtered:
        _write_json(out, FILTERED_NAME, filtered)
    manifest = {
        "dataset": job.dataset,
        "converter": f"data_prep.{job.converter}",
        "converter_version": job.version,
        **job.manifest,
        "band_stats": band_stats_entry(summaries[stats_split].stats, stats_split),
        "splits": {name: s.manifest_entry() for name, s in summaries.items()},
        "skipped": {"count": len(skipped), "file": SKIPPED_NAME},
        "filtered": {"count": len(filtered), "file": FILTERED_NAME if filtered else None},
        "options": job.options,
        **({"notes": job.notes} if job.notes else {}),
    }
    write_manifest(out, manifest)
    _print_summary(out, job, summaries, skipped, filtered, time.time() - began, args.workers)
    return manifest


def _print_summary(out, job, summaries, skipped, filtered, seconds, workers) -> None:
    written_now = sum(s.written_now for s in summaries.values())
    total = sum(s.size for s in summaries.values())
    sizes = ", ".join(f"{name} {s.size}" for name, s in summaries.items())
    rate = written_now / seconds if seconds > 0 else float("nan")
    print(f"{job.dataset} -> {out}: {total} patches ({sizes}); {len(skipped)} skipped, {len(filtered)} filtered.")
    print(f"Wrote {written_now} patches in {seconds:.1f} s: {rate:.1f} patches/s with {workers} worker(s)"
          + (f"; {total - written_now} were already done (resumed)." if total > written_now else "."))
    for key, value in job.notes.items():
        print(f"  {key}: {value}")
    if skipped:
        print(f"Skipped patches and reasons: {os.path.join(out, SKIPPED_NAME)}")


def main_guard(main: Callable[[], None]) -> None:
    """Runs a converter's ``main`` and turns its errors into one message and exit status 1
    (``ssl4eo_jax.errors.run_guarded``; a traceback only with ``--verbose``)."""
    try:
        run_guarded(main)
    except BadPatch as e:
        print(f"error: {e}\n(re-run with --skip-bad to skip such patches and list them in {SKIPPED_NAME})",
              file=sys.stderr)
        sys.exit(1)