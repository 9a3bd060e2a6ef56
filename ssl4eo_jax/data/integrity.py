"""Shard integrity: the facts the writer records of each shard and the checks that readers run.

``check_split`` runs whenever a split is opened (``SplitSource``, every run). It is cheap: per shard
one ``stat`` and one read of the ArrayRecord footer, no file is hashed. It checks that every shard
the manifest lists exists with its recorded byte size and record count, and that the counts add up
to the split's size; the first mismatch raises ``DatasetError`` naming the shard, what was expected
and what was found, and the fix. ``python -m data_prep.verify DIR`` runs the same checks plus the
sha256 of every file (and, with ``--full``, decodes every record).

Manifests written before ``shard_info`` existed have no per-shard facts: for them only the presence
of the shards and the total count are checked, with one warning per dataset that suggests
``data_prep.verify``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
from typing import Callable

from ssl4eo_jax.data.manifest import MANIFEST_NAME, DatasetError, Manifest, ShardInfo

_HASH_CHUNK = 4 << 20
_PARALLEL_OPEN = 16  # shards whose footers are read concurrently (a network disk answers slowly)
_warned_roots: set[str] = set()


def file_sha256(path: str, on_bytes: Callable[[int], None] | None = None) -> str:
    """The sha256 (hex) of a file, read in chunks; ``on_bytes(n)`` after each chunk (progress bars)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def count_records(path: str) -> int:
    """The number of records of an ArrayRecord file (read from its footer).

    The reader reports 0 records, not an error, for a missing or truncated file and raises an
    anonymous ``RuntimeError`` only when closed; both become a ``DatasetError`` that names the file.
    """
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(path, "readahead_buffer_size:0")
        ok = reader.ok()
        count = reader.num_records() if ok else 0
        reader.close()
    except Exception as e:  # noqa: BLE001 - any library error is a damaged file here
        raise DatasetError(f"{path} cannot be read as an ArrayRecord file ({_describe(e)})") from e
    if not ok:
        raise DatasetError(f"{path} cannot be read as an ArrayRecord file (the reader reports an error)")
    return int(count)


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else f"{type(e).__name__}, likely truncated or overwritten"


def shard_problem(root: str, name: str, info: ShardInfo | None) -> tuple[int | None, str | None]:
    """Cheap checks of one shard: ``(record count or None, problem or None)``.

    With ``info`` the byte size is compared before the file is opened (a truncated file fails there,
    by name, not inside the reader), then the record count; without it only presence and readability.
    """
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        return None, f"{path} is listed in {MANIFEST_NAME} but missing"
    if info is not None:
        size = os.path.getsize(path)
        if size != info.bytes:
            return None, (f"{path} has {size} bytes but {MANIFEST_NAME} records {info.bytes} "
                          f"({'truncated' if size < info.bytes else 'overwritten or replaced'})")
    try:
        count = count_records(path)
    except DatasetError as e:
        return None, str(e)
    if info is not None and count != info.records:
        return count, f"{path} holds {count} records but {MANIFEST_NAME} records {info.records}"
    return count, None


def shard_problems(manifest: Manifest, split: str) -> list[tuple[int | None, str | None]]:
    """``shard_problem`` of every shard of ``split``, in record order (footers read concurrently)."""
    names = list(manifest.split(split)["shards"])
    infos = manifest.shard_info(split) or [None] * len(names)
    if len(names) <= 2:
        return [shard_problem(manifest.root, n, i) for n, i in zip(names, infos)]
    with concurrent.futures.ThreadPoolExecutor(min(_PARALLEL_OPEN, len(names))) as pool:
        return list(pool.map(lambda ni: shard_problem(manifest.root, *ni), zip(names, infos)))


def warn_without_shard_info(manifest: Manifest) -> None:
    """One warning per dataset (and process) whose manifest predates ``shard_info``."""
    if manifest.root in _warned_roots:
        return
    _warned_roots.add(manifest.root)
    logging.warning(
        "%s records no per-shard sizes, counts or checksums (written by an older converter): only the "
        "presence of the shards and the total count are checked. Check the data with `python -m "
        "data_prep.verify %s --full`; re-running the converter with the same command adds them.",
        os.path.join(manifest.root, MANIFEST_NAME), manifest.root,
    )


def check_split(manifest: Manifest, split: str) -> list[int]:
    """The record count of each shard of ``split``; ``DatasetError`` on the first mismatch with the
    manifest (missing, truncated or replaced shard, wrong count, counts not adding up)."""
    entry = manifest.split(split)
    if manifest.shard_info(split) is None:
        warn_without_shard_info(manifest)
    counts = []
    for count, problem in shard_problems(manifest, split):
        if problem is not None:
            raise DatasetError(f"Split {split!r} of {manifest.root}: {problem}; {manifest.repair_hint()}.")
        counts.append(int(count))
    if sum(counts) != int(entry["size"]):
        raise DatasetError(
            f"Split {split!r} of {manifest.root} holds {sum(counts)} records in its shards but "
            f"{MANIFEST_NAME} says {entry['size']}: the shards are incomplete or from another conversion; "
            f"{manifest.repair_hint()}."
        )
    return counts


def check_dataset(manifest: Manifest) -> None:
    """``check_split`` of every split."""
    for split in manifest.splits:
        check_split(manifest, split)
