"""SEN12MS converter: season/scene/patch layout, 128 px tiles, IGBP labels from the pickle, splits."""

import os
import pickle

import numpy as np
import pytest

from data_prep import sen12ms
from data_prep.lists import read_names
from ssl4eo_jax.data.writer import BadPatch

from prep_helpers import REALDATA, convert, needs_realdata, read_split, write_tif

# (season, scene, patches): scene 124 of spring is a hold-out (test) scene, 112 a validation scene.
SCENES = [("ROIs1158_spring", 124, (100, 101)), ("ROIs1158_spring", 112, (30,)), ("ROIs1970_fall", 2, (7, 8))]


def reference_labels(fractions: np.ndarray, threshold: float = 0.1) -> tuple[int, list[int]]:
    """The SEN12MS code's simplification, written out as it is there."""
    lc = fractions
    simple = np.asarray([sum(lc[0:5]), sum(lc[5:7]), sum(lc[7:9]), lc[9], lc[10], lc[11] + lc[13], lc[12],
                         lc[14], lc[15], lc[16]])
    return int(np.argmax(simple)), list(np.flatnonzero(simple >= threshold))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("sen12ms")
    rng = np.random.default_rng(0)
    pixels, labels = {}, {}
    for season, scene, patches in SCENES:
        for p in patches:
            name = f"{season}_s2_{scene}_p{p}.tif"
            s2 = rng.integers(1, 10000, (13, 256, 256)).astype(np.uint16)
            s1 = rng.normal(-15, 4, (2, 256, 256)).astype(np.float32)
            write_tif(str(root / season / f"s2_{scene}" / name), s2)
            write_tif(str(root / season / f"s1_{scene}" / name.replace("_s2_", "_s1_")), s1)
            write_tif(str(root / season / f"lc_{scene}" / name.replace("_s2_", "_lc_")),
                      rng.integers(1, 18, (4, 256, 256)).astype(np.uint16))
            pixels[name] = (s2, s1)
            labels[name] = rng.dirichlet(np.full(17, 0.4))
    with open(root / "IGBP_probability_labels.pkl", "wb") as f:
        pickle.dump(labels, f)
    return root, pixels, labels


def test_tiles_are_exact_and_labels_follow_the_official_simplification(archive, tmp_path):
    root, pixels, labels = archive
    manifest = convert(sen12ms, "--src", root, "--labels", root / "IGBP_probability_labels.pkl", "--s1", "--out", tmp_path)
    assert manifest["shape"] == [128, 128, 15] and manifest["dtype"] == "float32"
    assert manifest["bands"][8] == "B8A" and manifest["bands"][-2:] == ["VV", "VH"]
    assert manifest["classes"] == list(sen12ms.IGBP_10) and manifest["multi_label"] is True
    assert manifest["label_kinds"] == ["single", "multi"]
    sizes = {s: e["size"] for s, e in manifest["splits"].items()}
    assert sizes == {"train": 8, "val": 4, "test": 8}  # scene 2 / scene 112 / hold-out scene 124, 4 tiles each
    assert all(i.startswith("ROIs1158_spring_s2_124_") for i in read_split(tmp_path, "test"))
    for tile_id, item in read_split(tmp_path, "train").items():
        name, row, col = tile_id.rsplit("_", 2)
        name, row, col = name + ".tif", int(row[1:]), int(col[1:])
        s2, s1 = pixels[name]
        np.testing.assert_array_equal(item["image"][..., :13], s2[:, row:row + 128, col:col + 128].transpose(1, 2, 0))
        np.testing.assert_array_equal(item["image"][..., 13:], s1[:, row:row + 128, col:col + 128].transpose(1, 2, 0))
        single, multi = reference_labels(labels[name])
        assert item["label"] == single and list(np.flatnonzero(item["multi_hot"])) == multi


def test_whole_patches_full_igbp_and_single_task_uint16(archive, tmp_path):
    root, pixels, labels = archive
    manifest = convert(sen12ms, "--src", root, "--labels", root / "IGBP_probability_labels.pkl", "--tile", "256",
                       "--classes", "17", "--task", "single", "--threshold", "0.2", "--out", tmp_path)
    assert manifest["dtype"] == "uint16" and manifest["multi_label"] is False and len(manifest["classes"]) == 17
    item = read_split(tmp_path, "val")["ROIs1158_spring_s2_112_p30_r0_c0"]
    np.testing.assert_array_equal(item["image"], pixels["ROIs1158_spring_s2_112_p30.tif"][0].transpose(1, 2, 0))
    vector = labels["ROIs1158_spring_s2_112_p30.tif"]
    assert item["label"] == np.argmax(vector) and list(np.flatnonzero(item["multi_hot"])) == list(np.flatnonzero(vector >= 0.2))


def test_official_split_lists_and_missing_labels(archive, tmp_path):
    root, _, labels = archive
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "test_list.txt").write_text("ROIs1970_fall_s2_2_p7.tif\r\n")
    with open(lists / "val_list.pkl", "wb") as f:
        pickle.dump(["ROIs1158_spring_s2_124_p100.tif"], f)
    pkl = root / "IGBP_probability_labels.pkl"
    manifest = convert(sen12ms, "--src", root, "--labels", pkl, "--split-dir", lists, "--out", tmp_path / "a")
    assert {s: e["size"] for s, e in manifest["splits"].items()} == {"train": 12, "val": 4, "test": 4}
    partial = {k: v for k, v in labels.items() if k != "ROIs1970_fall_s2_2_p8.tif"}
    with open(tmp_path / "partial.pkl", "wb") as f:
        pickle.dump(partial, f)
    with pytest.raises(BadPatch, match="ROIs1970_fall_s2_2_p8.tif: patch missing from the label pickle"):
        convert(sen12ms, "--src", root, "--labels", tmp_path / "partial.pkl", "--out", tmp_path / "b")
    manifest = convert(sen12ms, "--src", root, "--labels", tmp_path / "partial.pkl", "--skip-bad", "--out", tmp_path / "c")
    assert manifest["skipped"]["count"] == 1 and manifest["splits"]["train"]["size"] == 4
    (lists / "test_list.txt").write_text("ROIs1970_fall_s2_2_p9.tif\n")
    with pytest.raises(BadPatch, match="test_list.txt: lists ROIs1970_fall_s2_2_p9.tif, which is missing"):
        convert(sen12ms, "--src", root, "--labels", pkl, "--split-dir", lists, "--out", tmp_path / "d")


@needs_realdata
def test_built_in_scene_lists_match_the_official_files():
    folder = os.path.join(REALDATA, "metadata", "sen12ms")
    holdout = {}
    for line in read_names(os.path.join(folder, "SEN12MS_holdOutScenes.txt")):
        season, scene = line.split("/")
        holdout.setdefault(season, set()).add(int(scene.replace("s1_", "")))
    assert holdout == {k: set(v) for k, v in sen12ms.HOLDOUT_SCENES.items()}
    test_list = read_names(os.path.join(folder, "test_list.txt"))
    assert len(test_list) == 18106
    scenes = {sen12ms._scene_of(name) for name in test_list}  # the official test list = the hold-out scenes
    assert scenes == {(season, s) for season, ids in sen12ms.HOLDOUT_SCENES.items() for s in ids}
