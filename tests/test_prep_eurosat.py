"""EuroSAT-MS converter: both archive layouts, the B8A move, splits, bad inputs, resume, determinism."""

import json
import os

import numpy as np
import pytest

from data_prep import eurosat
from ssl4eo_jax.data import load_manifest
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.writer import BadPatch

from prep_helpers import REALDATA, convert, needs_realdata, read_split, read_tif, shard_digests, write_tif

PER_CLASS = 5


def make_archive(root: str, layout: str = "zenodo", per_class: int = PER_CLASS) -> str:
    """EuroSAT_MS/<Class>/<Class>_<n>.tif: 13 x 64 x 64 uint16, file band k filled around 100 * (k+1)."""
    base = os.path.join(root, "EuroSAT_MS" if layout == "zenodo" else "ds/images/remote_sensing/otherDatasets/sentinel_2/tif")
    rng = np.random.default_rng(0)
    for label, cls in enumerate(eurosat.CLASSES):
        for n in range(1, per_class + 1):
            tile = (np.arange(13)[:, None, None] + 1) * 100 + rng.integers(0, 50, (13, 64, 64))
            tile[0, 0, 0] = label  # makes every tile distinct and traceable
            write_tif(os.path.join(base, cls, f"{cls}_{n}.tif"), tile.astype(np.uint16))
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(str(tmp_path_factory.mktemp("eurosat")))


def test_round_trip_is_exact_with_b8a_moved_after_b08(archive, tmp_path):
    manifest = convert(eurosat, "--src", archive, "--out", tmp_path)
    assert manifest["bands"] == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    assert manifest["dtype"] == "uint16" and manifest["shape"] == [64, 64, 13]
    assert manifest["classes"] == list(eurosat.CLASSES) and manifest["multi_label"] is False
    records = {}
    for split in ("train", "val", "test"):
        records.update(read_split(tmp_path, split))
    assert len(records) == 10 * PER_CLASS
    for patch_id, item in records.items():
        cls = patch_id.rsplit("_", 1)[0]
        tif = read_tif(os.path.join(archive, "EuroSAT_MS", cls, patch_id + ".tif"))
        expected = np.concatenate([tif[:8], tif[12:13], tif[8:12]]).transpose(1, 2, 0)
        np.testing.assert_array_equal(item["image"], expected)
        assert item["label"] == eurosat.CLASSES.index(cls)
        # B8A (file band 13, ~1300) sits at index 8, B09 (~900) at 9, B10 (~1000) at 10.
        assert 1300 <= item["image"][..., 8].min() and item["image"][..., 9].max() < 1000


def test_stratified_split_is_seeded_per_class_and_recorded(archive, tmp_path):
    manifest = convert(eurosat, "--src", archive, "--out", tmp_path / "a", "--split-seed", "3")
    assert manifest["split_method"] == {"kind": "stratified_random", "seed": 3, "fractions": [0.6, 0.2, 0.2]}
    sizes = {s: manifest["splits"][s]["size"] for s in ("train", "val", "test")}
    assert sizes == {"train": 30, "val": 10, "test": 10}
    ids = {s: set(read_split(tmp_path / "a", s)) for s in sizes}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    for cls in eurosat.CLASSES:  # 3/1/1 of each class
        assert sum(i.rsplit("_", 1)[0] == cls for i in ids["train"]) == 3
    other = convert(eurosat, "--src", archive, "--out", tmp_path / "b", "--split-seed", "4")
    assert other["splits"]["train"]["size"] == 30
    assert open(tmp_path / "b" / "train-ids.txt").read() != open(tmp_path / "a" / "train-ids.txt").read()


def test_split_lists_with_jpg_names_and_the_dfki_layout(tmp_path):
    root = make_archive(str(tmp_path / "dfki"), layout="dfki", per_class=2)
    lists = tmp_path / "lists"
    lists.mkdir()
    names = {"train": [], "val": [], "test": []}
    for cls in eurosat.CLASSES:
        names["train"].append(f"{cls}_1.jpg")
        names["test" if cls < "M" else "val"].append(f"{cls}_2.jpg")
    for split, members in names.items():
        (lists / f"eurosat-{split}.txt").write_text("\n".join(members) + "\n")
    manifest = convert(eurosat, "--src", root, "--out", tmp_path / "out", "--split-dir", lists)
    assert manifest["split_method"]["kind"] == "lists"
    for split, members in names.items():
        assert sorted(read_split(tmp_path / "out", split)) == sorted(n[:-4] for n in members)
    (lists / "eurosat-test.txt").write_text("AnnualCrop_2.jpg\nForest_99.jpg\n")
    with pytest.raises(BadPatch, match="eurosat-test.txt: lists Forest_99.jpg, which is missing"):
        convert(eurosat, "--src", root, "--out", tmp_path / "out2", "--split-dir", lists)


@pytest.mark.parametrize("problem, message", [
    ("corrupt", "cannot read the GeoTIFF"),
    ("shape", "raster is 32x32 px, expected 64x64"),
    ("dtype", "dtype float32, expected uint16"),
    ("bands", "has 12 bands, expected 13"),
])
def test_bad_tiles_stop_with_the_file_named_or_are_skipped_and_listed(tmp_path, problem, message):
    root = make_archive(str(tmp_path / "src"), per_class=2)
    bad = os.path.join(root, "EuroSAT_MS", "Forest", "Forest_2.tif")
    if problem == "corrupt":
        with open(bad, "r+b") as f:
            f.truncate(300)
    else:
        array = {"shape": np.zeros((13, 32, 32), np.uint16), "dtype": np.zeros((13, 64, 64), np.float32),
                 "bands": np.zeros((12, 64, 64), np.uint16)}[problem]
        write_tif(bad, array)
    with pytest.raises(BadPatch, match=f"{bad}: {message}"):
        convert(eurosat, "--src", root, "--out", tmp_path / "out", "--split-fractions", "1,0,0")
    manifest = convert(eurosat, "--src", root, "--out", tmp_path / "out2", "--split-fractions", "1,0,0", "--skip-bad")
    assert manifest["splits"]["train"]["size"] == 19 and manifest["skipped"]["count"] == 1
    skipped = json.load(open(tmp_path / "out2" / "skipped.json"))
    assert skipped[0]["item"][0] == "Forest/Forest_2.tif" and message in skipped[0]["reason"]


def test_unknown_class_folder_is_an_error(tmp_path):
    root = make_archive(str(tmp_path / "src"), per_class=1)
    write_tif(os.path.join(root, "EuroSAT_MS", "Glacier", "Glacier_1.tif"), np.zeros((13, 64, 64), np.uint16))
    with pytest.raises(DatasetError, match="Glacier.*unknown class folder"):
        convert(eurosat, "--src", root, "--out", tmp_path / "out")


def test_resume_after_an_interrupted_run_finishes_only_the_missing_shards(tmp_path):
    root = make_archive(str(tmp_path / "src"), per_class=3)
    args = ["--src", root, "--split-fractions", "1,0,0", "--records-per-shard", "4"]
    clean = tmp_path / "clean"
    convert(eurosat, *args, "--out", clean)
    # Break a tile in the 4th shard (item 13): the run stops there, as after a crash.
    bad = os.path.join(root, "EuroSAT_MS", "Industrial", "Industrial_2.tif")
    good = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(b"not a tiff")
    out = tmp_path / "out"
    with pytest.raises(BadPatch, match="Industrial_2.tif"):
        convert(eurosat, *args, "--out", out)
    done = sorted(n for n in os.listdir(out) if n.endswith(".array_record"))
    assert done == [f"train-{k:05d}-of-00008.array_record" for k in range(3)]  # items 0..11 of 30
    assert os.path.exists(out / "train-00003-of-00008.array_record.tmp")  # never looks complete
    assert not os.path.exists(out / "manifest.json")
    before = {n: os.stat(out / n).st_mtime_ns for n in done}
    with open(bad, "wb") as f:
        f.write(good)
    convert(eurosat, *args, "--out", out)
    assert {n: os.stat(out / n).st_mtime_ns for n in done} == before  # finished shards were kept
    assert shard_digests(out) == shard_digests(clean)
    assert load_manifest(str(out)).split_size("train") == 30
    with pytest.raises(DatasetError, match="other settings or inputs.*options"):
        convert(eurosat, *args[:-2], "--records-per-shard", "4", "--split-seed", "1", "--out", out)


def test_output_is_byte_identical_across_runs_and_worker_counts(archive, tmp_path):
    args = ["--src", archive, "--records-per-shard", "7"]
    convert(eurosat, *args, "--out", tmp_path / "one", workers=1)
    convert(eurosat, *args, "--out", tmp_path / "two", workers=2)
    assert shard_digests(tmp_path / "one") == shard_digests(tmp_path / "two")
    assert len(shard_digests(tmp_path / "one")) == 5 + 2 + 2
    assert open(tmp_path / "one" / "manifest.json").read() == open(tmp_path / "two" / "manifest.json").read().replace(
        '"workers": 2', '"workers": 1')


@needs_realdata
def test_real_eurosat_tiles(tmp_path):
    src = os.path.join(REALDATA, "eurosat_ms_rico3")
    manifest = convert(eurosat, "--src", src, "--out", tmp_path, "--split-fractions", "1,0,0")
    records = read_split(tmp_path, "train")
    assert sorted(records) == ["AnnualCrop_1", "Pasture_300", "SeaLake_3000"]
    for patch_id, item in records.items():
        tif = read_tif(os.path.join(src, patch_id.split("_")[0], patch_id + ".tif"))
        np.testing.assert_array_equal(item["image"][..., 8], tif[12])  # B8A
        np.testing.assert_array_equal(item["image"][..., [0, 1, 2, 3, 4, 5, 6, 7]], tif[:8].transpose(1, 2, 0))
        np.testing.assert_array_equal(item["image"][..., 9:], tif[8:12].transpose(1, 2, 0))
        assert item["image"][..., 10].max() < 40  # B10 (cirrus) is dark
        assert manifest["classes"][item["label"]] == patch_id.split("_")[0]
