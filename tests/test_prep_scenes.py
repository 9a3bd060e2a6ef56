"""Scenes converter: per-band and multi-band GeoTIFF scenes cut into patches, filters, the +1000 offset."""

import json
import os

import numpy as np
import pytest
from prep_helpers import REALDATA, convert, needs_realdata, read_split, read_tif, write_tif

from data_prep import scenes
from data_prep.resample import resize
from ssl4eo_jax.data.manifest import DatasetError

BANDS = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B11": 20, "B01": 60}
SIZE = 120  # 10 m pixels of the fixture scenes


def write_band_scene(folder, rng, offset: int = 0, nodata_corner: bool = False, cloud_rows: int = 0) -> dict:
    pixels = {}
    for band, gsd in BANDS.items():
        n = SIZE * 10 // gsd
        array = rng.integers(1, 4000, (n, n)).astype(np.uint16) + offset
        if nodata_corner:
            array[: 30 * 10 // gsd, : 30 * 10 // gsd] = 0
        write_tif(os.path.join(folder, f"{band}.tif"), array, pixel=float(gsd))
        pixels[band] = array
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:cloud_rows] = 2
    write_tif(os.path.join(folder, "cloud_mask.tif"), mask)
    return pixels


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    old = "cells/1U_2R/S2A_MSIL2A_20200101T101010_N0213_R022_T33UUP_20200101T120000"
    new = "cells/3U_4R/S2B_MSIL2A_20230101T101010_N0509_R022_T33UUP_20230101T120000"
    pixels = {
        old: write_band_scene(str(root / old), rng, nodata_corner=True),
        new: write_band_scene(str(root / new), rng, offset=1000, cloud_rows=50),
    }
    return root, pixels, old, new


def test_patches_offsets_and_filters(archive, tmp_path):
    root, pixels, old, new = archive
    manifest = convert(scenes, "--src", root, "--patch-size", "40", "--out", tmp_path)
    assert manifest["bands"] == ["B01", "B02", "B03", "B04", "B05", "B08", "B11"] and manifest["dtype"] == "uint16"
    offsets = {s["name"]: (s["offset_removed"], s["offset_reason"]) for s in manifest["scenes"]}
    assert offsets == {old: (0, "processing baseline N0213"), new: (1000, "processing baseline N0509")}
    records = read_split(tmp_path, "train")
    # 3x3 patches per scene; the old scene loses its nodata corner patch, the new one its cloudy top row
    # (mask rows 0..49 flag 100% of row-0 patches and 25% of row-1 patches, > 10%).
    filtered = json.load(open(tmp_path / "filtered.json"))
    assert sorted((f["item"][0], f["item"][1], f["item"][2]) for f in filtered) == [
        (0, 0, 0), (1, 0, 0), (1, 0, 40), (1, 0, 80), (1, 40, 0), (1, 40, 40), (1, 40, 80)]
    assert {f["reason"].split()[0] for f in filtered} == {"nodata", "cloud"}
    assert len(records) == 9 - 1 + 9 - 6 == manifest["splits"]["train"]["size"]
    item = records[f"{old}/r40_c80"]
    np.testing.assert_array_equal(item["image"][..., 1], pixels[old]["B02"][40:80, 80:120])  # exact 10 m
    b05 = resize(pixels[old]["B05"], (SIZE, SIZE), "bilinear")  # windowed resampling = whole-band resampling
    np.testing.assert_array_equal(item["image"][..., 4], b05[40:80, 80:120])
    b01 = resize(pixels[old]["B01"], (SIZE, SIZE), "bilinear")
    np.testing.assert_array_equal(item["image"][..., 0], b01[40:80, 80:120])
    item = records[f"{new}/r80_c40"]
    np.testing.assert_array_equal(item["image"][..., 1], pixels[new]["B02"][80:120, 40:80] - 1000)  # offset removed


def test_offset_keep_stride_band_selection_and_relaxed_filters(archive, tmp_path):
    root, pixels, old, new = archive
    manifest = convert(scenes, "--src", root, "--patch-size", "60", "--stride", "30", "--bands", "B04,B02,B08",
                       "--offset", "keep", "--max-cloud", "1", "--max-nodata", "0.3", "--out", tmp_path)
    assert manifest["bands"] == ["B02", "B04", "B08"] and manifest["filtered"]["count"] == 0
    records = read_split(tmp_path, "train")
    assert len(records) == 2 * 9
    np.testing.assert_array_equal(records[f"{new}/r30_c60"]["image"][..., 2], pixels[new]["B08"][30:90, 60:120])


def test_multiband_tif_scenes_need_band_names(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.integers(1, 3000, (4, 64, 64)).astype(np.uint16)
    write_tif(str(tmp_path / "src" / "scene_a.tif"), array)
    with pytest.raises(DatasetError, match="cannot tell the bands of scene_a.tif; pass --bands"):
        convert(scenes, "--src", tmp_path / "src", "--patch-size", "32", "--bands", "", "--out", tmp_path / "x")
    manifest = convert(scenes, "--src", tmp_path / "src", "--patch-size", "32", "--bands", "B08,B04,B03,B02",
                       "--out", tmp_path / "out")
    assert manifest["bands"] == ["B02", "B03", "B04", "B08"]
    item = read_split(tmp_path / "out", "train")["scene_a.tif/r32_c0"]
    np.testing.assert_array_equal(item["image"], array[::-1, 32:64, 0:32].transpose(1, 2, 0))


def test_offset_rules():
    assert scenes.offset_of("S2A_MSIL1C_20220301T000000_N0400_R1_T1_20220301T1", {}, "auto")[0] == 1000
    assert scenes.offset_of("S2A_MSIL2A_20210301T000000_N0300_R1_T1_20210301T1", {}, "auto")[0] == 0
    # N9999 (locally processed) says nothing; the sensing date (not the generation date) decides.
    assert scenes.offset_of("S2B_MSIL2A_20200223T032739_N9999_R018_T48QUE_20230924T183543", {}, "auto")[0] == 0
    assert scenes.offset_of("scene", {"BOA_ADD_OFFSET_B2": "-1000"}, "auto") == (1000, "tag BOA_ADD_OFFSET_B2=-1000")
    assert scenes.offset_of("S2A_MSIL2A_20230101T0_N0509_x", {}, "keep")[0] == 0


@needs_realdata
def test_real_major_tom_cells(tmp_path):
    src = os.path.join(REALDATA, "majortom_core_s2l2a_rico2")
    manifest = convert(scenes, "--src", src, "--patch-size", "256", "--out", tmp_path)
    assert manifest["splits"]["train"]["size"] == 2 * 16 and len(manifest["bands"]) == 12
    by_name = {s["name"].split("/")[2]: s for s in manifest["scenes"]}
    assert by_name["0U_199R"]["offset_removed"] == 1000 and by_name["199U_1099R"]["offset_removed"] == 0
    records = read_split(tmp_path, "train")
    name = manifest["scenes"][0]["name"]
    b02 = read_tif(os.path.join(src, name, "B02.tif"))[0]
    assert b02.min() >= 1000  # baseline N0400 carries the +1000 offset
    np.testing.assert_array_equal(records[f"{name}/r256_c512"]["image"][..., 1], b02[256:512, 512:768] - 1000)
