"""Datasets verify themselves: per-shard facts in the manifest, checks on open, repair by re-running
the writer, ``python -m data_prep.verify``, and bad records named by shard and index."""

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from ssl4eo_jax.data import DatasetError, load_manifest, open_split
from ssl4eo_jax.data.manifest import write_manifest
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import PatchRecord, band_stats_entry, write_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"train": 10, "val": 3}
PER_SHARD = 4  # train: shards of 4, 4 and 2 records
CLASSES = ["a", "b", "c"]
SHARD1 = "train-00001-of-00003.array_record"


def _record(split: str, bad: int | None, index: int) -> PatchRecord:
    """A 4x4x2 uint16 patch; record ``bad`` holds bytes that are no ssl4eo-jax record."""
    image = np.full((4, 4, 2), 100 * index + (split == "val"), np.uint16)
    patch_id = f"{split}_{index}"
    data = b"JUNK" + bytes(60) if index == bad else encode_record(image, patch_id, index % 3, [index % 3])
    return PatchRecord(data, patch_id, image)


def _write(out: str, bad: int | None = None) -> dict:
    """The smallest dataset with several shards; returns the manifest as written."""
    splits, stats = {}, None
    for split, count in SIZES.items():
        summary = write_split(out, split, count, functools.partial(_record, split, bad if split == "train" else None),
                              records_per_shard=PER_SHARD, progress=False)
        splits[split] = summary.manifest_entry()
        stats = summary.stats if split == "train" else stats
    manifest = {"dataset": "tiny", "converter": "tests.tiny", "converter_version": "1", "bands": ["B04", "B08"],
                "dtype": "uint16", "shape": [4, 4, 2], "band_stats": band_stats_entry(stats), "classes": CLASSES,
                "multi_label": False, "label_kinds": ["single", "multi"], "splits": splits}
    write_manifest(out, manifest)
    return json.load(open(os.path.join(out, "manifest.json")))


@pytest.fixture
def data(tmp_path) -> str:
    out = str(tmp_path / "tiny")
    _write(out)
    return out


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _truncate(path: str) -> bytes:
    original = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(original[: len(original) // 2])
    return original


def _drop_shard_info(root: str) -> None:
    path = os.path.join(root, "manifest.json")
    manifest = json.load(open(path))
    for entry in manifest["splits"].values():
        del entry["shard_info"]
    json.dump(manifest, open(path, "w"))


def test_manifest_records_name_count_size_and_sha256_of_every_shard(data):
    manifest = json.load(open(os.path.join(data, "manifest.json")))
    train = manifest["splits"]["train"]
    assert train["shards"] == [f"train-0000{k}-of-00003.array_record" for k in range(3)]
    assert [i["name"] for i in train["shard_info"]] == train["shards"]
    assert [i["records"] for i in train["shard_info"]] == [4, 4, 2]
    assert [i["records"] for i in manifest["splits"]["val"]["shard_info"]] == [3]
    for split in SIZES:
        for info in manifest["splits"][split]["shard_info"]:
            path = os.path.join(data, info["name"])
            assert info["bytes"] == os.path.getsize(path) > 0
            assert info["sha256"] == _sha(path)
            assert json.load(open(path + ".meta.json"))["sha256"] == info["sha256"]
    assert [s.records for s in load_manifest(data).shard_info("train")] == [4, 4, 2]


def test_a_converter_records_shard_info_through_its_summary(tmp_path):
    from test_prep_eurosat import make_archive

    from data_prep import eurosat

    from prep_helpers import convert

    src = make_archive(str(tmp_path / "src"), per_class=1)
    manifest = convert(eurosat, "--src", src, "--out", tmp_path / "out", "--records-per-shard", "2")
    for split, entry in manifest["splits"].items():
        assert sum(i["records"] for i in entry["shard_info"]) == entry["size"] > 0
        for info in entry["shard_info"]:
            assert info["sha256"] == _sha(str(tmp_path / "out" / info["name"]))


def test_a_truncated_shard_is_refused_at_open_by_name(data):
    _truncate(os.path.join(data, SHARD1))
    with pytest.raises(DatasetError) as e:
        open_split(data, "train")
    message = str(e.value)
    assert os.path.join(data, SHARD1) in message and "truncated" in message
    assert f"{os.path.getsize(os.path.join(data, SHARD1))} bytes" in message
    assert "re-run the converter (tests.tiny) with the same command: it resumes and rewrites" in message
    assert len(open_split(data, "val")) == 3  # the other split is untouched


def test_a_deleted_shard_is_refused_at_open_by_name(data):
    os.remove(os.path.join(data, "train-00002-of-00003.array_record"))
    with pytest.raises(DatasetError, match=r"train-00002-of-00003\.array_record is listed in manifest.json but "
                                           "missing; re-run the converter"):
        open_split(data, "train")


def test_a_truncated_shard_without_recorded_size_still_names_the_file(data):
    _drop_shard_info(data)
    _truncate(os.path.join(data, SHARD1))
    with pytest.raises(DatasetError, match=rf"{SHARD1} cannot be read as an ArrayRecord file"):
        open_split(data, "train")


def test_a_wrong_record_count_is_refused(data):
    path = os.path.join(data, "manifest.json")
    manifest = json.load(open(path))
    infos = manifest["splits"]["train"]["shard_info"]
    infos[1]["records"], infos[2]["records"] = 5, 1  # the total still matches the split size
    json.dump(manifest, open(path, "w"))
    with pytest.raises(DatasetError, match=rf"{SHARD1} holds 4 records but manifest.json records 5"):
        open_split(data, "train")
    # Without shard_info, only the total is known: it must add up to the split size.
    _drop_shard_info(data)
    manifest = json.load(open(path))
    manifest["splits"]["train"]["size"] = 11
    json.dump(manifest, open(path, "w"))
    with pytest.raises(DatasetError, match="holds 10 records in its shards but manifest.json says 11"):
        open_split(data, "train")


def test_an_old_manifest_opens_with_one_warning(data, caplog):
    _drop_shard_info(data)
    with caplog.at_level(logging.WARNING):
        train, val = open_split(data, "train"), open_split(data, "val")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"python -m data_prep.verify {data}" in warnings[0]
    assert (len(train), len(val)) == (10, 3)
    assert train[5]["id"] == "train_5" and int(train[5]["image"][0, 0, 0]) == 500


def test_rerunning_the_writer_rewrites_a_damaged_shard_byte_identically(data):
    names = sorted(n for n in os.listdir(data) if n.endswith(".array_record"))
    before = {n: open(os.path.join(data, n), "rb").read() for n in names}
    mtimes = {n: os.stat(os.path.join(data, n)).st_mtime_ns for n in names}
    _truncate(os.path.join(data, SHARD1))
    summary = write_split(data, "train", SIZES["train"], functools.partial(_record, "train", None),
                          records_per_shard=PER_SHARD, progress=False)
    assert summary.written_now == 4  # only the damaged shard
    assert {n: open(os.path.join(data, n), "rb").read() for n in names} == before
    assert {n: os.stat(os.path.join(data, n)).st_mtime_ns for n in names if n != SHARD1} == \
        {n: t for n, t in mtimes.items() if n != SHARD1}
    # Same size, other contents, newer date (an edited or replaced file): the sha256 catches it.
    path = os.path.join(data, "train-00000-of-00003.array_record")
    damaged = bytearray(before["train-00000-of-00003.array_record"])
    damaged[100:110] = bytes(10)
    open(path, "wb").write(bytes(damaged))
    os.utime(path, ns=(mtimes[SHARD1] + 10**9, mtimes[SHARD1] + 10**9))
    summary = write_split(data, "train", SIZES["train"], functools.partial(_record, "train", None),
                          records_per_shard=PER_SHARD, progress=False)
    assert summary.written_now == 4 and open(path, "rb").read() == before["train-00000-of-00003.array_record"]
    assert [i.sha256 for i in summary.shard_info] == [_sha(os.path.join(data, n)) for n in summary.shards]


def test_sidecars_of_an_older_writer_are_completed_without_rewriting_the_shards(data):
    names = [n for n in os.listdir(data) if n.endswith(".array_record")]
    mtimes = {n: os.stat(os.path.join(data, n)).st_mtime_ns for n in names}
    for name in names:
        meta_path = os.path.join(data, name + ".meta.json")
        meta = json.load(open(meta_path))
        for key in ("records", "bytes", "sha256", "mtime_ns"):
            del meta[key]
        json.dump(meta, open(meta_path, "w"))
    summary = write_split(data, "train", SIZES["train"], functools.partial(_record, "train", None),
                          records_per_shard=PER_SHARD, progress=False)
    assert summary.written_now == 0
    assert [(i.records, i.sha256) for i in summary.shard_info] == [
        (n, _sha(os.path.join(data, s))) for n, s in zip([4, 4, 2], summary.shards)]
    assert {n: os.stat(os.path.join(data, n)).st_mtime_ns for n in names} == mtimes


def _verify(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.verify", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_verify_command_passes_a_clean_dataset_and_names_a_truncated_shard(data):
    clean = _verify(data, "--full", "--no-progress")
    assert clean.returncode == 0, clean.stderr
    assert "OK: 13 records in 4 shards of tiny (checksums and every record verified)" in clean.stdout
    rows = {line.split()[0]: line.split() for line in clean.stdout.splitlines()[1:3]}
    assert rows["train"][1:3] == ["3", "10"] and rows["val"][1:3] == ["1", "3"]
    assert rows["train"][-1] == rows["val"][-1] == "0"
    _truncate(os.path.join(data, SHARD1))
    bad = _verify(data, "--no-progress")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and os.path.join(data, SHARD1) in errors[0] and "truncated" in errors[0]
    assert "1 problem(s)" in bad.stdout
    missing = _verify(os.path.join(data, "nowhere"))  # no such directory: one line, no traceback
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    nowhere = os.path.join(data, "nowhere")
    assert missing.stderr.strip().splitlines() == [f"error: Data directory {nowhere} does not exist."]


def test_verify_checks_checksums_by_default_and_records_with_full(tmp_path, capsys):
    from data_prep import verify

    out = str(tmp_path / "bad_record")
    _write(out, bad=6)  # record 6: shard 1, record 2 there; its checksum is the one written
    verify.main([out, "--no-progress"])
    assert "OK: 13 records" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        verify.main([out, "--full", "--no-progress"])
    assert e.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{os.path.join(out, SHARD1)}: record 2 (record 6 of split 'train')" in err[0]
    # Damage in place, same size: only the checksum sees it.
    path = os.path.join(out, "val-00000-of-00001.array_record")
    damaged = bytearray(open(path, "rb").read())
    damaged[200:204] = bytes(4) if damaged[200:204] != bytes(4) else b"\xff" * 4
    open(path, "wb").write(bytes(damaged))
    with pytest.raises(SystemExit):
        verify.main([out, "--split", "val", "--no-progress"])
    err = capsys.readouterr().err
    assert f"{path}: sha256" in err and "delete it and re-run the converter" in err
    _drop_shard_info(out)
    verify.main([out, "--split", "train", "--no-progress"])
    assert "records no per-shard sizes or checksums" in capsys.readouterr().out


def test_a_record_that_fails_to_decode_names_its_shard_and_index(tmp_path):
    out = str(tmp_path / "bad_record")
    _write(out, bad=6)
    source = open_split(out, "train")
    assert source[5]["id"] == "train_5" and source.locate(6) == (os.path.join(out, SHARD1), 2)
    with pytest.raises(DatasetError, match=rf"Record 2 of shard {out}/{SHARD1} \(record 6 of split 'train'\) "
                                           r"cannot be decoded \(ValueError: Not an ssl4eo-jax record"):
        source[6]


def test_the_training_pipeline_names_a_bad_record(tmp_path):
    from ssl4eo_jax.data import pipeline

    out = str(tmp_path / "bad_record")
    _write(out, bad=6)
    batches = pipeline.train_dataset(open_split(out, "train"), 8, seed=0)
    with pytest.raises(DatasetError, match=rf"Record 2 of shard {out}/{SHARD1} \(record 6 of split 'train'\)"):
        for step in range(3):  # 3 batches of 8 cover every record of the 10 at least once
            batches[step]


def test_a_shard_that_the_reader_rejects_names_the_record(data):
    path = os.path.join(data, SHARD1)
    damaged = bytearray(open(path, "rb").read())
    damaged[90:110] = bytes(b ^ 0xFF for b in damaged[90:110])  # inside the first chunk (it starts at byte 64)
    open(path, "wb").write(bytes(damaged))
    source = open_split(data, "train")  # same size: the cheap checks pass
    with pytest.raises(DatasetError, match=rf"Record 0 of shard {path} \(record 4 of split 'train'\) cannot be read"):
        source[4]


def test_the_cached_demo_data_repairs_a_deleted_shard(tmp_path, caplog):
    from ssl4eo_jax.data.demo import ensure_demo_dataset

    kwargs = dict(cache_dir=str(tmp_path), sizes={"train": 8, "val": 4}, size=12, progress=False)
    out = ensure_demo_dataset(**kwargs)
    shard = os.path.join(out, "train-00000-of-00001.array_record")
    original = open(shard, "rb").read()
    os.remove(shard)
    with caplog.at_level(logging.WARNING):
        assert ensure_demo_dataset(**kwargs) == out
    assert any("cached demo data is damaged" in r.getMessage() and shard in r.getMessage() for r in caplog.records)
    assert open(shard, "rb").read() == original and len(open_split(out, "train")) == 8
