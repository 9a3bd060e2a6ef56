"""So2Sat LCZ42 converter on HDF5 files in the archive's layout (sen1, sen2, label; float64, NHWC)."""

import os

import numpy as np
import pytest

from data_prep import so2sat
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.writer import BadPatch

from prep_helpers import convert, read_split

COUNTS = {"training.h5": 300, "validation.h5": 20, "testing.h5": 30}


def write_h5(path: str, n: int, seed: int) -> dict[str, np.ndarray]:
    import h5py

    rng = np.random.default_rng(seed)
    data = {
        "sen1": rng.normal(0, 0.3, (n, 32, 32, 8)),
        "sen2": rng.integers(0, 6000, (n, 32, 32, 10)) / 10000.0,  # decimal reflectance, float64
        "label": np.eye(17)[rng.integers(0, 17, n)],
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value, chunks=(1,) + value.shape[1:])
    return data


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("so2sat")
    data = {name: write_h5(str(root / name), n, k) for k, (name, n) in enumerate(COUNTS.items())}
    return root, data


def test_float64_round_trip_is_bit_exact_with_s1_and_labels(archive, tmp_path):
    root, data = archive
    manifest = convert(so2sat, "--src", root, "--s1", "--out", tmp_path)
    assert manifest["dtype"] == "float64" and manifest["archive_dtype"] == "float64"
    assert manifest["bands"][:10] == list(so2sat.S2_BANDS) and len(manifest["bands"]) == 18
    assert {s: e["size"] for s, e in manifest["splits"].items()} == {"train": 300, "val": 20, "test": 30}
    for split, name in (("train", "training.h5"), ("test", "testing.h5")):
        for patch_id, item in read_split(tmp_path, split).items():
            row = int(patch_id.rsplit("_", 1)[1])
            assert patch_id.startswith(name[:-3])
            np.testing.assert_array_equal(item["image"][..., :10], data[name]["sen2"][row])
            np.testing.assert_array_equal(item["image"][..., 10:], data[name]["sen1"][row])
            assert item["label"] == np.argmax(data[name]["label"][row])
    pixels = data["training.h5"]["sen2"].reshape(-1, 10)
    np.testing.assert_allclose(manifest["band_stats"]["mean"][:10], pixels.mean(0), rtol=1e-12)


def test_float32_narrowing_and_the_culture_10_layout(archive, tmp_path):
    root, data = archive
    culture = tmp_path / "src" / "culture_10"
    culture.mkdir(parents=True)
    for name in ("training.h5", "testing.h5"):
        os.symlink(root / name, culture / name)
    manifest = convert(so2sat, "--src", tmp_path / "src", "--variant", "culture_10", "--dtype", "float32",
                       "--out", tmp_path / "out")
    assert manifest["dtype"] == "float32" and manifest["variant"] == "culture_10" and set(manifest["splits"]) == {"train", "test"}
    item = read_split(tmp_path / "out", "test")["testing_000007"]
    expected = data["testing.h5"]["sen2"][7]
    np.testing.assert_array_equal(item["image"], expected.astype(np.float32))
    assert np.max(np.abs(item["image"] - expected) / np.maximum(expected, 1e-12)) <= 2.0**-24
    # DN / 10000 survives the narrowing: the 12-bit DN comes back exactly.
    np.testing.assert_array_equal(np.rint(item["image"].astype(np.float64) * 10000), np.rint(expected * 10000))


def test_bad_files_and_labels(tmp_path):
    import h5py

    src = tmp_path / "src"
    data = write_h5(str(src / "training.h5"), 10, 0)
    with h5py.File(src / "training.h5", "r+") as f:
        f["label"][4] = np.zeros(17)
    with pytest.raises(BadPatch, match=r"training.h5: label\[4\] is not one-hot"):
        convert(so2sat, "--src", src, "--out", tmp_path / "a")
    manifest = convert(so2sat, "--src", src, "--out", tmp_path / "b", "--skip-bad")
    assert manifest["splits"]["train"]["size"] == 9 and manifest["skipped"]["count"] == 1
    with h5py.File(src / "validation.h5", "w") as f:
        f["sen2"] = data["sen2"][:, :16]
        f["label"] = data["label"]
    with pytest.raises(DatasetError, match=r"validation.h5: sen2 has shape \(10, 16, 32, 10\), expected \(N, 32, 32, 10\)"):
        convert(so2sat, "--src", src, "--out", tmp_path / "c")
    with pytest.raises(DatasetError, match="training.h5: no dataset 'sen1'"):
        os.remove(src / "validation.h5")
        with h5py.File(src / "training.h5", "r+") as f:
            del f["sen1"]
        convert(so2sat, "--src", src, "--s1", "--out", tmp_path / "d")
