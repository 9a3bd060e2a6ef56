"""Records, manifests, the shard writer and the demo dataset."""

import json
import os

import numpy as np
import pytest

from ssl4eo_jax.data import DatasetError, demo, load_manifest, open_split
from ssl4eo_jax.data.records import decode_record, encode_record
from ssl4eo_jax.data.stats import BandStats
from ssl4eo_jax.data.writer import BadPatch, PatchRecord, write_split


def test_record_round_trip_is_lossless():
    image = np.random.default_rng(0).integers(0, 65535, size=(5, 7, 13), dtype=np.uint16)
    raw = encode_record(image, "patch_1", label=3, labels=[1, 3])
    out = decode_record(raw, np.uint16, (5, 7, 13), num_classes=5)
    np.testing.assert_array_equal(out["image"], image)
    assert out["id"] == "patch_1" and out["label"] == 3
    np.testing.assert_array_equal(out["multi_hot"], [0, 1, 0, 1, 0])
    floats = np.random.default_rng(1).random((4, 4, 10)).astype(np.float32)
    np.testing.assert_array_equal(decode_record(encode_record(floats, "f"), np.float32, (4, 4, 10), 17)["image"], floats)


def test_decode_rejects_wrong_shapes_and_foreign_bytes():
    raw = encode_record(np.zeros((4, 4, 3), np.uint16), "p")
    with pytest.raises(ValueError, match="'p'.*48"):
        decode_record(raw, np.uint16, (4, 4, 4), 1)
    with pytest.raises(ValueError, match="Not an ssl4eo-jax record"):
        decode_record(b"JUNK" + raw[4:], np.uint16, (4, 4, 3), 1)


def test_band_stats_are_exact_and_merge_independent():
    rng = np.random.default_rng(0)
    images = [rng.normal(1000, 300, size=(6, 6, 4)) for _ in range(9)]
    a, b = BandStats(), BandStats()
    for i, im in enumerate(images):
        (a if i < 4 else b).update(im)
    a.merge(b)
    pixels = np.concatenate([im.reshape(-1, 4) for im in images])
    np.testing.assert_allclose(a.mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(a.std, pixels.std(0), rtol=1e-12)


def test_demo_patches_look_like_sentinel2():
    rng = np.random.default_rng(0)
    image, cmap = demo.make_patch(rng, 48)
    assert image.dtype == np.uint16 and image.shape == (48, 48, 13)
    assert len(demo.BANDS) == 13 and demo.BANDS[8] == "B8A" and demo.BANDS[7] == "B08"
    # The 60 m bands (B01, B09, B10) are constant over 6x6 blocks before noise: strongly smooth.
    b01 = image[:, :, 0].astype(float)
    b02 = image[:, :, 1].astype(float)
    assert np.abs(np.diff(b01, axis=1)).mean() < np.abs(np.diff(b02, axis=1)).mean()
    # Vegetation is bright in the NIR and dark in the red; water is dark in the NIR.
    sig = dict(zip(demo.CLASSES, demo.SIGNATURES))
    assert sig["forest"][7] > 3 * sig["forest"][3] and sig["water"][7] < sig["water"][2]
    label, labels = demo.labels_from_map(cmap)
    assert label in labels and all(np.mean(cmap == c) >= 0.1 for c in labels)


def test_demo_generation_is_deterministic_and_resumable(tmp_path):
    sizes = {"train": 30, "val": 10}
    a = demo.generate(str(tmp_path / "a"), sizes, size=12, seed=3, records_per_shard=8, progress=False)
    b = demo.generate(str(tmp_path / "b"), sizes, size=12, seed=3, records_per_shard=8, progress=False, workers=2)
    shards = sorted(f for f in os.listdir(a) if f.endswith(".array_record"))
    assert shards[0] == "train-00000-of-00004.array_record" and len(shards) == 6
    for name in shards:
        assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read()
    # Simulate a crash: one shard missing, one left half-written under its temporary name.
    os.remove(os.path.join(a, "train-00002-of-00004.array_record"))
    with open(os.path.join(a, "train-00003-of-00004.array_record.tmp"), "wb") as f:
        f.write(b"partial")
    demo.generate(a, sizes, size=12, seed=3, records_per_shard=8, progress=False)
    for name in shards:
        assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read()
    manifest = json.load(open(os.path.join(a, "manifest.json")))
    assert manifest["splits"]["train"]["size"] == 30 and manifest["bands"][8] == "B8A"
    ids = open(os.path.join(a, "train-ids.txt")).read().split()
    assert ids[0] == "demo_train_000000" and len(ids) == 30


def test_open_split_reads_what_was_written(demo_dir):
    ds = open_split(demo_dir, "val")
    assert len(ds) == 48 and ds.manifest.num_bands == 13 and ds.manifest.num_classes == 10
    item = ds[5]
    expected = demo.demo_record("val", 5, seed=0, size=36)
    np.testing.assert_array_equal(item["image"], expected.image)
    assert item["id"] == "demo_val_000005"
    mean, std = ds.manifest.band_stats()
    pixels = np.stack([open_split(demo_dir, "train")[i]["image"] for i in range(96)]).reshape(-1, 13)
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-5)


def test_missing_manifest_and_split_errors_name_the_path(tmp_path, demo_dir):
    with pytest.raises(DatasetError, match=f"{tmp_path}/manifest.json not found.*data_prep"):
        load_manifest(str(tmp_path))
    with pytest.raises(DatasetError, match="does not exist"):
        load_manifest(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="no split 'holdout'"):
        open_split(demo_dir, "holdout")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_manifest(str(tmp_path))


def _record_or_bad(index: int) -> PatchRecord:
    if index == 2:
        raise BadPatch("/archive/patch_2/B04.tif: expected uint16, found float32")
    image = np.full((2, 2, 1), index, np.uint16)
    return PatchRecord(encode_record(image, f"p{index}"), f"p{index}", image)


def test_writer_stops_on_bad_patches_unless_skipping(tmp_path):
    with pytest.raises(BadPatch, match="B04.tif"):
        write_split(str(tmp_path / "strict"), "train", 5, _record_or_bad, progress=False)
    summary = write_split(str(tmp_path / "lenient"), "train", 5, _record_or_bad, skip_bad=True, progress=False)
    assert summary.size == 4 and summary.skipped[0]["item"] == 2 and "B04.tif" in summary.skipped[0]["reason"]
