"""SSL4EO-S12 raw layout: every band onto 264 px, all seasons of a location in one THWC record."""

import os

import numpy as np
import pytest

from data_prep import ssl4eo_s12
from data_prep.resample import resize
from ssl4eo_jax.data.records import decode_header
from ssl4eo_jax.data.writer import BadPatch

from prep_helpers import REALDATA, convert, needs_realdata, read_split, read_tif, write_tif

DATES = ("20200604T054639_20200604T054831_T43RCP", "20200823T054639_20200823T055618_T43RCP",
         "20201112T054639_20201112T054831_T43RCP", "20210210T054639_20210210T054831_T43RCP")


def write_location(root, location: str, rng, extra_row: bool = False, dates=DATES) -> dict:
    pixels = {}
    for stamp in reversed(dates):  # written out of order: the converter sorts by date
        for band in ssl4eo_s12.MODALITIES["s2c"][1]:
            n = ssl4eo_s12.native_size(band)
            array = rng.integers(1, 9000, (n + (1 if extra_row and n == 264 else 0), n)).astype(np.uint16)
            write_tif(str(root / "s2c" / location / stamp / ssl4eo_s12.band_file(band)), array, crs="EPSG:4326",
                      pixel=1e-4 * 264 / n)
            pixels[stamp, band] = array
        (root / "s2c" / location / stamp / "metadata.json").write_text("{}")
    return pixels


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl4eo")
    rng = np.random.default_rng(0)
    pixels = {"0000200": write_location(root, "0000200", rng), "0000201": write_location(root, "0000201", rng, True)}
    return root, pixels


def test_all_seasons_of_a_location_in_one_record(archive, tmp_path):
    root, pixels = archive
    manifest = convert(ssl4eo_s12, "--src", root, "--modality", "s2c", "--out", tmp_path)
    assert manifest["shape"] == [4, 264, 264, 13] and manifest["time_axis"] == 0 and manifest["seasons"] == 4
    assert manifest["bands"] == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    records = read_split(tmp_path, "train")
    item = records["0000200"]
    for t, stamp in enumerate(DATES):
        for k, band in enumerate(manifest["bands"]):
            expected = pixels["0000200"][stamp, band]
            if ssl4eo_s12.native_size(band) == 264:
                np.testing.assert_array_equal(item["image"][t, ..., k], expected)  # 10 m: bit-exact
            else:
                np.testing.assert_array_equal(item["image"][t, ..., k], resize(expected, (264, 264), "bilinear"))
    # A tile with one extra row in its 10 m bands is resampled onto the grid, not rejected.
    b02 = pixels["0000201"][DATES[2], "B02"]
    assert b02.shape == (265, 264)
    np.testing.assert_array_equal(records["0000201"]["image"][2, ..., 1], resize(b02, (264, 264), "bilinear"))
    from ssl4eo_jax.data import open_split

    header, _ = decode_header(open_split(str(tmp_path), "train").raw(0))
    assert header["dates"] == [d[:15] for d in DATES]


def test_a_location_with_missing_seasons_or_bands(archive, tmp_path):
    import shutil

    root, _ = archive
    src = tmp_path / "src"
    shutil.copytree(root, src)
    shutil.rmtree(src / "s2c" / "0000201" / DATES[1])
    with pytest.raises(BadPatch, match="0000201: 3 timestamp folders, expected 4"):
        convert(ssl4eo_s12, "--src", src, "--modality", "s2c", "--out", tmp_path / "a")
    assert convert(ssl4eo_s12, "--src", src, "--modality", "s2c", "--skip-bad",
                   "--out", tmp_path / "b")["splits"]["train"]["size"] == 1
    os.remove(src / "s2c" / "0000200" / DATES[0] / "B8A.tif")
    with pytest.raises(BadPatch, match=f"0000200/{DATES[0]}/B8A.tif: file missing"):
        convert(ssl4eo_s12, "--src", src / "s2c", "--modality", "s2c", "--out", tmp_path / "c")


@needs_realdata
@pytest.mark.parametrize("modality, count", [("s2c", 13), ("s2a", 12), ("s1", 2)])
def test_real_location(tmp_path, modality, count):
    src = os.path.join(REALDATA, "ssl4eo_s12_rico_1loc")  # the sample keeps 2 of the 4 dates
    manifest = convert(ssl4eo_s12, "--src", src, "--modality", modality, "--seasons", "2", "--out", tmp_path)
    item = read_split(tmp_path, "train")["0000200"]
    assert item["image"].shape == (2, 264, 264, count) and manifest["dtype"] == ("float32" if modality == "s1" else "uint16")
    folder = os.path.join(src, modality, "0000200")
    first = sorted(os.listdir(folder), key=lambda n: ssl4eo_s12._DATE.search(n).group(1))[0]
    band, file = ("VV", "VV.tif") if modality == "s1" else ("B04", "B4.tif")
    np.testing.assert_array_equal(item["image"][0, ..., manifest["bands"].index(band)], read_tif(os.path.join(folder, first, file))[0])
    if modality != "s1":
        b11 = read_tif(os.path.join(folder, first, "B11.tif"))[0]
        np.testing.assert_array_equal(item["image"][0, ..., manifest["bands"].index("B11")], resize(b11, (264, 264), "bilinear"))
