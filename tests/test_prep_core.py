"""Shared data_prep pieces: resampling, band names, list files, stratified splits, the inspect tool."""

import bz2
import os
import pickle

import numpy as np
import pytest

from data_prep import bands, inspect, lists, resample

from prep_helpers import convert


def test_bilinear_matches_pillow_when_upsampling():
    from PIL import Image

    band = np.random.default_rng(0).random((20, 30)).astype(np.float32) * 5000
    for size in ((60, 90), (120, 120), (37, 41)):
        ours = resample.resize(band, size, "bilinear")
        theirs = np.asarray(Image.fromarray(band, "F").resize(size[::-1], Image.BILINEAR))
        np.testing.assert_allclose(ours, theirs, atol=5e-3)


def test_cubic_kernel_and_nearest_replication():
    idx, w = resample.axis_weights(60, 128, "bicubic")
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)  # constants are kept
    x = (np.arange(128) + 0.5) * 60 / 128 - 0.5
    t = x - np.floor(x)
    a = -0.75  # OpenCV's INTER_CUBIC kernel
    np.testing.assert_allclose(w[:, 1], ((a + 2) * t - (a + 3)) * t * t + 1, atol=1e-12)
    np.testing.assert_allclose(w[:, 0], ((a * (1 + t) - 5 * a) * (1 + t) + 8 * a) * (1 + t) - 4 * a, atol=1e-12)
    band = np.arange(6, dtype=np.uint16).reshape(2, 3)
    np.testing.assert_array_equal(resample.resize(band, (4, 6), "nearest"), np.kron(band, np.ones((2, 2), np.uint16)))


def test_resampling_keeps_native_bands_exact_and_rounds_integers():
    band = np.random.default_rng(1).integers(0, 65535, (60, 60)).astype(np.uint16)
    assert resample.resize(band, (60, 60), "bicubic") is not band
    np.testing.assert_array_equal(resample.resize(band, (60, 60), "bicubic"), band)
    up = resample.resize(band, (120, 120), "bicubic")
    assert up.dtype == np.uint16  # overshoot of the cubic kernel is clipped to the dtype's range
    exact = resample.resample_window(band.astype(np.float64), (60, 60), (120, 120), (0, 0, 120, 120), "bicubic")
    np.testing.assert_array_equal(up, np.clip(np.rint(exact), 0, 65535).astype(np.uint16))


def test_a_window_equals_the_crop_of_the_whole_band():
    band = np.random.default_rng(2).random((44, 44))
    whole = resample.resize(band, (264, 264), "bicubic")
    window = (100, 37, 64, 90)
    src = resample.source_window((44, 44), (264, 264), window, "bicubic")
    crop = band[src[0]:src[0] + src[2], src[1]:src[1] + src[3]]
    part = resample.resample_window(crop, (44, 44), (264, 264), window, "bicubic", src_offset=src[:2])
    np.testing.assert_array_equal(part, whole[100:164, 37:127])


def test_band_names():
    assert [bands.canonical_band(b) for b in ("B1", "b8a", "B08", "S2_B12", "vh")] == ["B01", "B8A", "B08", "B12", "VH"]
    assert bands.s2_sorted(["B8A", "B1", "B12", "B08"]) == ["B01", "B08", "B8A", "B12"]
    with pytest.raises(ValueError, match="B13"):
        bands.canonical_band("B13")


def test_list_files(tmp_path):
    (tmp_path / "a.csv.bz2").write_bytes(bz2.compress(b"x_1\r\ny_2,s1_y\r\n\r\n"))
    assert lists.read_rows(str(tmp_path / "a.csv.bz2")) == [["x_1"], ["y_2", "s1_y"]]
    with open(tmp_path / "b.pkl", "wb") as f:
        pickle.dump(["p.tif", "q.tif"], f)
    assert lists.read_names(str(tmp_path / "b.pkl")) == ["p.tif", "q.tif"]
    assert lists.find_list(str(tmp_path), "a") == str(tmp_path / "a.csv.bz2")


def test_stratified_split_is_seeded_and_proportional():
    labels = [c for c in range(3) for _ in range(10)]
    parts = lists.stratified_split(labels, [0.6, 0.2, 0.2], seed=5)
    assert parts == lists.stratified_split(labels, [0.6, 0.2, 0.2], seed=5)
    assert parts != lists.stratified_split(labels, [0.6, 0.2, 0.2], seed=6)
    assert sorted(sum(parts, [])) == list(range(30))
    for part, share in zip(parts, (6, 2, 2)):
        assert [sum(labels[i] == c for i in part) for c in range(3)] == [share] * 3


def test_inspect_prints_the_summary_and_writes_a_preview(tmp_path, capsys):
    from test_prep_eurosat import make_archive

    from data_prep import eurosat

    convert(eurosat, "--src", make_archive(str(tmp_path / "src"), per_class=1), "--out", tmp_path / "out",
            "--split-fractions", "1,0,0")
    capsys.readouterr()
    inspect.main([str(tmp_path / "out"), "--count", "4"])
    text = capsys.readouterr().out
    assert "eurosat" in text and "B8A mean" in text and "train 10" in text and "SeaLake" in text
    png = tmp_path / "out" / "preview-train.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 5000
    rgb = inspect.to_rgb(np.random.default_rng(0).integers(0, 3000, (8, 8, 13)).astype(np.uint16), bands.S2_BANDS)
    assert rgb.shape == (8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1


def _record(stop_at, item):
    from ssl4eo_jax.data.records import encode_record
    from ssl4eo_jax.data.writer import PatchRecord

    if item == stop_at:
        raise KeyboardInterrupt  # what Ctrl-C raises in the converting process
    image = np.full((4, 4, 2), int(item[1:]), np.uint16)
    return PatchRecord(encode_record(image, f"p{item}"), f"p{item}", image)


def test_ctrl_c_leaves_only_complete_shards_and_a_rerun_finishes_them(tmp_path):
    import functools

    from ssl4eo_jax.data.writer import write_split

    items = [f"f{i}" for i in range(10)]
    with pytest.raises(KeyboardInterrupt):
        write_split(str(tmp_path / "a"), "train", items, functools.partial(_record, "f5"), records_per_shard=3, progress=False)
    names = sorted(os.listdir(tmp_path / "a"))
    assert [n for n in names if n.endswith(".array_record")] == ["train-00000-of-00004.array_record"]
    assert "train-00001-of-00004.array_record.tmp" in names
    summary = write_split(str(tmp_path / "a"), "train", items, functools.partial(_record, None), records_per_shard=3,
                          progress=False)
    assert summary.written_now == 7 and summary.size == 10
    write_split(str(tmp_path / "b"), "train", items, functools.partial(_record, None), records_per_shard=3, progress=False)
    from prep_helpers import shard_digests

    assert shard_digests(tmp_path / "a") == shard_digests(tmp_path / "b")


def test_two_conversions_never_write_into_one_directory(tmp_path):
    from test_prep_eurosat import make_archive

    from data_prep import convert as runner
    from data_prep import eurosat
    from ssl4eo_jax.data.manifest import DatasetError

    src = make_archive(str(tmp_path / "src"), per_class=1)
    (tmp_path / "out").mkdir()
    with runner._exclusive(str(tmp_path / "out")):
        with pytest.raises(DatasetError, match="Another conversion is writing into"):
            convert(eurosat, "--src", src, "--out", tmp_path / "out")
    assert convert(eurosat, "--src", src, "--out", tmp_path / "out", "--split-fractions", "1,0,0")["splits"]["train"]["size"] == 10
