"""BigEarthNet v1/v2 converter: layouts, band grid, 43 -> 19 labels, lists, exclusions, S1, errors."""

import bz2
import json
import os

import numpy as np
import pytest

from data_prep import bigearthnet
from data_prep import bigearthnet_classes as nomenclature
from data_prep.resample import resize
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.writer import BadPatch

from prep_helpers import REALDATA, convert, needs_realdata, read_split, read_tif, write_tif

PIXEL = {120: 10.0, 60: 20.0, 20: 60.0}
LABELS = {  # S2 patch -> 43-class names (the last one has no 19-class target)
    "S2A_MSIL2A_20170613T101031_0_1": ["Continuous urban fabric", "Discontinuous urban fabric", "Sea and ocean"],
    "S2B_MSIL2A_20170924T93020_0_2": ["Coniferous forest", "Peatbogs", "Transitional woodland/shrub"],
    "S2A_MSIL2A_20171221T112501_1_1": ["Non-irrigated arable land", "Vineyards", "Annual crops associated with permanent crops"],
    "S2A_MSIL2A_20170617T113321_1_2": ["Pastures", "Airports"],
    "S2B_MSIL2A_20180204T94161_2_1": ["Mixed forest"],
    "S2A_MSIL2A_20170717T113321_2_2": ["Bare rock", "Intertidal flats"],
}


def s2_bands(rng) -> dict[str, np.ndarray]:
    return {b: rng.integers(1, 12000, (n, n)).astype(np.uint16) for b, n in bigearthnet.NATIVE_SIZE.items()}


def write_patch(folder: str, name: str, bands: dict, nodata=None) -> None:
    for band, pixels in bands.items():
        write_tif(os.path.join(folder, name, f"{name}_{band}.tif"), pixels, pixel=PIXEL[pixels.shape[0]], nodata=nodata)


def s1_name(s2: str) -> str:
    return f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{'_'.join(s2.split('_')[-2:])}"


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    """BigEarthNet-v1.0/<patch>/ (12 band tifs + json), BigEarthNet-S1-v1.0/, and the official lists."""
    root = tmp_path_factory.mktemp("ben1")
    rng = np.random.default_rng(0)
    pixels = {}
    for name, labels in LABELS.items():
        pixels[name] = s2_bands(rng)
        write_patch(str(root / "BigEarthNet-v1.0"), name, pixels[name])
        meta = {"labels": labels, "coordinates": {"ulx": 0, "uly": 1200, "lrx": 1200, "lry": 0},
                "projection": "PROJCS[...]", "tile_source": "S2A_MSIL1C_x.SAFE", "acquisition_date": "2017-06-13 10:10:31"}
        (root / "BigEarthNet-v1.0" / name / f"{name}_labels_metadata.json").write_text(json.dumps(meta))
        s1 = s1_name(name)
        for band in ("VV", "VH"):
            pixels[name][band] = rng.normal(-15, 5, (120, 120)).astype(np.float32)
            write_tif(str(root / "BigEarthNet-S1-v1.0" / s1 / f"{s1}_{band}.tif"), pixels[name][band])
        s1_meta = {"labels": labels, "coordinates": {"ulx": 0, "uly": 1200, "lrx": 1200, "lly": 0},
                   "corresponding_s2_patch": name, "scene_source": "S1A_x", "acquisition_time": "2017-06-13T16:50:43"}
        (root / "BigEarthNet-S1-v1.0" / s1 / f"{s1}_labels_metadata.json").write_text(json.dumps(s1_meta))
    names = list(LABELS)
    lists = root / "lists"
    lists.mkdir()

    def write_list(stem, members, compress=False):
        data = "".join(f"{m}\r\n" for m in members).encode()  # official lists: no header, CRLF
        (lists / (stem + (".csv.bz2" if compress else ".csv"))).write_bytes(bz2.compress(data) if compress else data)

    write_list("train", [names[0], names[1], names[2]], compress=True)
    write_list("val", [names[3]])
    write_list("test", [names[4]])
    write_list("patches_with_seasonal_snow", [names[4]])  # a listed patch in an exclusion list is dropped
    write_list("patches_with_no_19_class_targets", [names[5]])
    return root, pixels


def test_v1_labels_band_grid_and_exclusions(v1, tmp_path):
    root, pixels = v1
    manifest = convert(bigearthnet, "--version", "1", "--src", root / "BigEarthNet-v1.0", "--splits", root / "lists",
                       "--out", tmp_path)
    assert manifest["classes"] == list(nomenclature.CLASSES_19) and manifest["multi_label"] is True
    assert manifest["classes"][0] == "Urban fabric" and manifest["classes"][18] == "Marine waters"  # original order
    assert manifest["bands"] == list(bigearthnet.BANDS) and manifest["dtype"] == "uint16"
    assert manifest["resampling"]["exact_bands"] == ["B02", "B03", "B04", "B08"]
    assert {s: e["size"] for s, e in manifest["splits"].items()} == {"train": 3, "val": 1}
    assert manifest["notes"]["listed in a split and in an exclusion list (dropped)"] == 1
    train = read_split(tmp_path, "train")
    first = train["S2A_MSIL2A_20170613T101031_0_1"]
    assert list(np.flatnonzero(first["multi_hot"])) == [0, 18]  # urban fabric (0+1), marine waters
    assert list(np.flatnonzero(train["S2B_MSIL2A_20170924T93020_0_2"]["multi_hot"])) == [9, 13, 15]
    assert list(np.flatnonzero(train["S2A_MSIL2A_20171221T112501_1_1"]["multi_hot"])) == [2, 3]
    assert list(np.flatnonzero(read_split(tmp_path, "val")["S2A_MSIL2A_20170617T113321_1_2"]["multi_hot"])) == [4]
    src = pixels["S2A_MSIL2A_20170613T101031_0_1"]
    for k, band in enumerate(bigearthnet.BANDS):
        if band in ("B02", "B03", "B04", "B08"):
            np.testing.assert_array_equal(first["image"][..., k], src[band])  # native 10 m: bit-exact
        else:
            np.testing.assert_array_equal(first["image"][..., k], resize(src[band], (120, 120), "bilinear"))


def test_v1_43_classes_resize_128_bicubic_and_s1(v1, tmp_path):
    root, pixels = v1
    manifest = convert(bigearthnet, "--version", "1", "--src", root / "BigEarthNet-v1.0", "--splits", root / "lists",
                       "--s1-src", root / "BigEarthNet-S1-v1.0", "--classes", "43", "--size", "128",
                       "--resample", "bicubic", "--out", tmp_path)
    assert manifest["classes"] == list(nomenclature.CLASSES_43) and manifest["dtype"] == "float32"
    assert manifest["bands"][-2:] == ["VV", "VH"] and manifest["shape"] == [128, 128, 14]
    item = read_split(tmp_path, "val")["S2A_MSIL2A_20170617T113321_1_2"]
    assert list(np.flatnonzero(item["multi_hot"])) == [5, 17]  # airports, pastures
    src = pixels["S2A_MSIL2A_20170617T113321_1_2"]
    np.testing.assert_array_equal(item["image"][..., 1], resize(src["B02"], (128, 128), "bicubic").astype(np.float32))
    np.testing.assert_array_equal(item["image"][..., 12], resize(src["VV"], (128, 128), "bicubic"))


def test_v1_s1_at_native_size_is_exact_and_paired_from_the_jsons(v1, tmp_path):
    root, pixels = v1
    convert(bigearthnet, "--version", "1", "--src", root / "BigEarthNet-v1.0", "--splits", root / "lists",
            "--s1-src", root / "BigEarthNet-S1-v1.0", "--out", tmp_path)
    for name, item in read_split(tmp_path, "train").items():
        np.testing.assert_array_equal(item["image"][..., 12], pixels[name]["VV"])
        np.testing.assert_array_equal(item["image"][..., 13], pixels[name]["VH"])
        np.testing.assert_array_equal(item["image"][..., 7], pixels[name]["B08"].astype(np.float32))


def test_v1_bad_inputs_name_the_file(v1, tmp_path):
    root, _ = v1
    src = tmp_path / "src"
    import shutil

    shutil.copytree(root / "BigEarthNet-v1.0", src)
    args = ["--version", "1", "--src", src, "--splits", root / "lists"]
    name = "S2B_MSIL2A_20170924T93020_0_2"
    os.remove(src / name / f"{name}_B8A.tif")
    with pytest.raises(BadPatch, match=f"{name}_B8A.tif: file missing"):
        convert(bigearthnet, *args, "--out", tmp_path / "a")
    manifest = convert(bigearthnet, *args, "--out", tmp_path / "b", "--skip-bad")
    assert manifest["skipped"]["count"] == 1 and manifest["splits"]["train"]["size"] == 2
    shutil.copy(root / "BigEarthNet-v1.0" / name / f"{name}_B8A.tif", src / name)
    meta = src / name / f"{name}_labels_metadata.json"
    meta.write_text(json.dumps({"labels": ["Coniferous forest", "Moon craters"]}))
    with pytest.raises(BadPatch, match=f"{meta}: unknown BigEarthNet 43-class label.*Moon craters"):
        convert(bigearthnet, *args, "--out", tmp_path / "c")
    shutil.rmtree(src / name)
    with pytest.raises(BadPatch, match=f"{name}: patch folder missing \\(listed in .*train.csv.bz2\\)"):
        convert(bigearthnet, *args, "--out", tmp_path / "d")
    assert convert(bigearthnet, *args, "--out", tmp_path / "e", "--allow-partial")["splits"]["train"]["size"] == 2
    with pytest.raises(DatasetError, match="no train.csv split list"):
        convert(bigearthnet, "--version", "1", "--src", src, "--out", tmp_path / "f")


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    """reBEN: BigEarthNet-S2/<tile>/<patch>/, BigEarthNet-S1/<product>/<s1>/, metadata parquets."""
    import pandas as pd

    root = tmp_path_factory.mktemp("ben2")
    rng = np.random.default_rng(1)
    rows, excluded, pixels = [], [], {}
    tile = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
    for k, (split, labels) in enumerate([("train", ["Arable land", "Urban fabric"]), ("validation", ["Marine waters"]),
                                         ("test", ["Coniferous forest", "Mixed forest"]), ("train", ["Pastures"])]):
        patch = f"{tile}_{k}_{k + 40}"
        s1 = f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{k}_{k + 40}"
        pixels[patch] = s2_bands(rng)
        write_patch(str(root / "BigEarthNet-S2" / tile), patch, pixels[patch], nodata=0)
        for band in ("VV", "VH"):
            pixels[patch][band] = rng.normal(-15, 5, (120, 120)).astype(np.float32)
            write_tif(str(root / "BigEarthNet-S1" / s1.rsplit("_", 3)[0] / s1 / f"{s1}_{band}.tif"), pixels[patch][band])
        row = {"patch_id": patch, "labels": np.array(sorted(labels), dtype=object), "split": split,
               "country": "Austria", "s1_name": s1, "s2v1_name": f"S2A_MSIL2A_20170613T101031_{k}_{k + 40}",
               "contains_seasonal_snow": False, "contains_cloud_or_shadow": k == 3}
        (excluded if k == 3 else rows).append(row)
    pd.DataFrame(rows).to_parquet(root / "metadata.parquet")
    pd.DataFrame(excluded).to_parquet(root / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    return root, pixels


def test_v2_metadata_labels_splits_and_s1(v2, tmp_path):
    root, pixels = v2
    manifest = convert(bigearthnet, "--version", "2", "--src", root, "--s1", "--out", tmp_path)
    assert {s: e["size"] for s, e in manifest["splits"].items()} == {"train": 1, "val": 1, "test": 1}
    assert manifest["notes"]["on disk, excluded (snow/cloud/shadow)"] == 1
    (patch, item), = read_split(tmp_path, "train").items()
    assert list(np.flatnonzero(item["multi_hot"])) == [0, 2]
    np.testing.assert_array_equal(item["image"][..., 3], pixels[patch]["B04"].astype(np.float32))
    np.testing.assert_array_equal(item["image"][..., 13], pixels[patch]["VH"])
    (_, val), = read_split(tmp_path, "val").items()
    assert list(np.flatnonzero(val["multi_hot"])) == [18]
    with pytest.raises(DatasetError, match="v2 has no 43-class labels"):
        convert(bigearthnet, "--version", "2", "--src", root, "--classes", "43", "--out", tmp_path / "x")


def test_v2_patch_missing_from_the_metadata_is_an_error(v2, tmp_path):
    import shutil

    root, _ = v2
    src = tmp_path / "src"
    shutil.copytree(root, src)
    tile = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
    shutil.copytree(src / "BigEarthNet-S2" / tile / f"{tile}_0_40", src / "BigEarthNet-S2" / tile / f"{tile}_9_99")
    with pytest.raises(BadPatch, match=f"{tile}_9_99: patch missing from the metadata .*metadata.parquet"):
        convert(bigearthnet, "--version", "2", "--src", src, "--out", tmp_path / "a")
    manifest = convert(bigearthnet, "--version", "2", "--src", src, "--out", tmp_path / "b", "--skip-bad")
    assert manifest["skipped"]["count"] == 1


@needs_realdata
def test_real_bigearthnet_v1_s2_and_s1(tmp_path):
    s2 = os.path.join(REALDATA, "bigearthnet_s2_v1_example", "BigEarthNet-S2-Example")
    s1 = os.path.join(REALDATA, "bigearthnet_s1_v1_example", "BigEarthNet-S1-Example")
    lists = os.path.join(REALDATA, "metadata", "bigearthnet_v1")
    manifest = convert(bigearthnet, "--version", "1", "--src", s2, "--s1-src", s1, "--splits", lists,
                       "--allow-partial", "--out", tmp_path)
    # 4 example patches are in train.csv, 1 in test.csv; the 6th is on the seasonal-snow list.
    assert {s: e["size"] for s, e in manifest["splits"].items()} == {"train": 4, "test": 1}
    assert manifest["notes"]["on disk, in an exclusion list"] == 1
    train = read_split(tmp_path, "train")
    name = "S2B_MSIL2A_20170924T93020_69_24"  # the 5-digit time field
    folder = os.path.join(s2, name)
    np.testing.assert_array_equal(train[name]["image"][..., 1], read_tif(os.path.join(folder, f"{name}_B02.tif"))[0])
    b05 = read_tif(os.path.join(folder, f"{name}_B05.tif"))[0]
    np.testing.assert_array_equal(train[name]["image"][..., 4], resize(b05, (120, 120), "bilinear"))
    vv = read_tif(os.path.join(s1, "S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24",
                               "S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24_VV.tif"))[0]
    np.testing.assert_array_equal(train[name]["image"][..., 12], vv)
    # json: Coniferous forest, Mixed forest, Transitional woodland/shrub, Peatbogs, Water bodies
    assert [manifest["classes"][i] for i in np.flatnonzero(train[name]["multi_hot"])] == [
        "Coniferous forest", "Mixed forest", "Transitional woodland, shrub", "Inland wetlands", "Inland waters"]


@needs_realdata
def test_real_bigearthnet_v2_with_the_official_metadata(tmp_path):
    src = os.path.join(REALDATA, "bigearthnet_v2_rico_tif")
    metadata = os.path.join(REALDATA, "metadata", "bigearthnet_v2", "metadata.parquet")
    manifest = convert(bigearthnet, "--version", "2", "--src", src, "--metadata", metadata, "--allow-partial",
                       "--stats-split", "val", "--out", tmp_path)
    (patch, item), = read_split(tmp_path, "val").items()
    assert patch == "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
    assert manifest["band_stats"]["split"] == "val"
    folder = os.path.join(src, "BigEarthNet-S2", patch.rsplit("_", 2)[0], patch)
    np.testing.assert_array_equal(item["image"][..., 7], read_tif(os.path.join(folder, f"{patch}_B08.tif"))[0])
    assert "Arable land" in [manifest["classes"][i] for i in np.flatnonzero(item["multi_hot"])]
