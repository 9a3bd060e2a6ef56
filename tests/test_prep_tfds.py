"""tfds converter on a real (tiny) TFDS array_record dataset, built here without TensorFlow."""

import numpy as np
import pytest
from prep_helpers import convert, read_split

tfds = pytest.importorskip("tensorflow_datasets")

from data_prep import tfds as tfds_converter  # noqa: E402

CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation"]
FILE_ORDER = "B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A"


def image_of(i: int) -> np.ndarray:
    """Band k of example i holds 100 * k + i (+ a ramp), so the band order is visible in the values."""
    base = np.arange(13, dtype=np.float32) * 100 + i
    return base[None, None, :] + np.arange(16, dtype=np.float32)[:, None, None] + np.zeros((16, 16, 1), np.float32)


class Prep4eoFixture(tfds.core.GeneratorBasedBuilder):
    """Like ``eurosat/all``: a float32 (H, W, 13) ``sentinel2`` tensor with B8A last, label, filename."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="all")]

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "sentinel2": tfds.features.Tensor(shape=(16, 16, 13), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=CLASSES),
            "filename": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 12), "test": self._generate_examples(12, 15)}

    def _generate_examples(self, start, stop):
        for i in range(start, stop):
            cls = CLASSES[i % 3]
            yield f"{cls}_{i}", {"sentinel2": image_of(i), "label": cls, "filename": f"{cls}_{i}.tif"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds"))
    Prep4eoFixture(data_dir=root, file_format="array_record").download_and_prepare()
    return root


def test_tfds_dataset_round_trip_with_band_reorder(data_dir, tmp_path):
    manifest = convert(tfds_converter, "--src", data_dir, "--name", "prep4eo_fixture/all", "--image-keys", "sentinel2",
                       "--bands", FILE_ORDER, "--out", tmp_path)
    assert manifest["dataset"] == "tfds:prep4eo_fixture/all" and manifest["dtype"] == "float32"
    assert manifest["bands"][7:10] == ["B08", "B8A", "B09"] and manifest["classes"] == CLASSES
    assert {s: e["size"] for s, e in manifest["splits"].items()} == {"train": 12, "test": 3}
    for split in ("train", "test"):
        for patch_id, item in read_split(tmp_path, split).items():
            i = int(patch_id.rsplit("_", 1)[1])
            source = image_of(i)
            np.testing.assert_array_equal(item["image"], source[..., [0, 1, 2, 3, 4, 5, 6, 7, 12, 8, 9, 10, 11]])
            assert CLASSES[item["label"]] == patch_id.rsplit("_", 1)[0]


def test_integral_floats_to_uint16_and_a_stratified_split(data_dir, tmp_path):
    import shutil

    manifest = convert(tfds_converter, "--src", data_dir, "--name", "prep4eo_fixture/all", "--image-keys", "sentinel2",
                       "--bands", FILE_ORDER, "--dtype", "uint16", "--keep-order", "--out", tmp_path / "a")
    assert manifest["dtype"] == "uint16" and manifest["bands"][-1] == "B8A"
    item = read_split(tmp_path / "a", "test")["Forest_13"]
    np.testing.assert_array_equal(item["image"], image_of(13).astype(np.uint16))
    # A train-only dataset can be cut by a seeded stratified split.
    only_train = tmp_path / "only_train"
    shutil.copytree(data_dir, only_train)
    for path in only_train.rglob("*-test.array_record*"):
        path.unlink()
    info = next(only_train.rglob("dataset_info.json"))
    text = info.read_text()
    import json

    meta = json.loads(text)
    meta["splits"] = [s for s in meta["splits"] if s["name"] == "train"]
    info.write_text(json.dumps(meta))
    manifest = convert(tfds_converter, "--src", only_train, "--name", "prep4eo_fixture/all", "--image-keys", "sentinel2",
                       "--bands", FILE_ORDER, "--split-fractions", "0.5,0.25,0.25", "--out", tmp_path / "b")
    assert {s: e["size"] for s, e in manifest["splits"].items()} == {"train": 6, "val": 3, "test": 3}
    assert manifest["split_method"]["kind"] == "stratified_random"
