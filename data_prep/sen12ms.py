"""SEN12MS (season/scene/patch GeoTIFFs) -> 128 px tiles, sharded ArrayRecord + manifest.

    python -m data_prep.sen12ms --src SEN12MS --labels IGBP_probability_labels.pkl --out data/sen12ms \\
        [--s1] [--tile 128] [--classes 10|17] [--task multi|single] [--threshold 0.1] [--split-dir DIR]

Layout: ``ROIs1158_spring/s2_<scene>/ROIs1158_spring_s2_<scene>_p<n>.tif`` (13 bands, 256x256 uint16
L1C, SAFE band order B01..B08, B8A, B09..B12), S1 beside it under ``s1_<scene>`` (VV, VH; float32 dB).
Each 256 px patch is cut into non-overlapping ``--tile`` px tiles (4 tiles of 128 px as in the SSL4EO
review); a tile's id is ``<patch>_r<row>_c<col>`` (pixel offsets) and it carries its patch's labels.

Labels come from the official ``IGBP_probability_labels.pkl`` (a dict: S2 file name -> 17 IGBP class
fractions), reduced to the simplified 10-class IGBP scheme exactly as the SEN12MS code does
(``--classes 17`` keeps the full scheme). Records carry both the single label (argmax) and the
multi-hot label (fraction >= ``--threshold``); ``--task`` sets which one the manifest calls the task.

Splits: the official hold-out scenes are the test split and the official validation scenes the val
split (both lists ship with the SEN12MS code and are built in here); the rest is train. Official split
lists (``{train,val,test}_list.txt`` or ``.pkl`` of S2 file names) in ``--split-dir`` override them.
The one patch the official code drops (NaN S1 values), ``ROIs1868_summer_s2_146_p202``, is left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pickle
import re

import numpy as np

from data_prep.bands import S1_BANDS, S2_BANDS
from data_prep.convert import Job, Problems, converter_parser, main_guard, run
from data_prep.geotiff import read_raster
from data_prep.lists import find_list, read_names
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import BadPatch, PatchRecord

VERSION = "1"
SEASONS = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")
PATCH = 256
IGBP_17 = (
    "Evergreen Needleleaf Forests", "Evergreen Broadleaf Forests", "Deciduous Needleleaf Forests",
    "Deciduous Broadleaf Forests", "Mixed Forests", "Closed (Dense) Shrublands", "Open (Sparse) Shrublands",
    "Woody Savannas", "Savannas", "Grasslands", "Permanent Wetlands", "Croplands", "Urban and Built-Up Lands",
    "Cropland/Natural Vegetation Mosaics", "Permanent Snow and Ice", "Barren", "Water Bodies",
)
IGBP_10 = ("Forest", "Shrubland", "Savanna", "Grassland", "Wetlands", "Croplands", "Urban/Built-up",
           "Snow/Ice", "Barren", "Water")
# 17 -> 10 (0-based): the sums of SEN12MS classification/dataset.py.
SIMPLIFY = (0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 5, 7, 8, 9)
BROKEN = ("ROIs1868_summer_s2_146_p202.tif",)
# schmitt-muc/SEN12MS splits/SEN12MS_holdOutScenes.txt (given there with s1_ folder names).
HOLDOUT_SCENES = {
    "ROIs1158_spring": (63, 146, 97, 124, 15, 17),
    "ROIs1868_summer": (43, 131, 19, 104, 72, 15, 79),
    "ROIs1970_fall": (120, 39, 144, 35, 61, 47, 30, 141),
    "ROIs2017_winter": (64, 146, 32, 107, 135),
}
# schmitt-muc/SEN12MS splits/ValidationScenes.txt (the scenes of its val_list.txt).
VALIDATION_SCENES = {
    "ROIs1158_spring": (112, 113, 117, 44, 45, 77),
    "ROIs1868_summer": (113, 26, 36, 55, 73, 89),
    "ROIs1970_fall": (1, 130, 14, 142, 20, 3, 57, 62, 93),
    "ROIs2017_winter": (103, 144, 69, 77),
}
_NAME = re.compile(r"^(ROIs\d{4}_[a-z]+)_s2_(\d+)_p(\d+)\.tif$")


@dataclasses.dataclass(frozen=True)
class Options:
    root: str
    labels: str
    s1: bool
    tile: int
    classes: int
    threshold: float


def s2_path(root: str, name: str) -> str:
    season, scene = _NAME.match(name).group(1, 2)
    return os.path.join(root, season, f"s2_{scene}", name)


def s1_path(path_s2: str) -> str:
    """The S1 file of an S2 file: ``_s2_`` -> ``_s1_`` and ``s2_`` -> ``s1_`` (folder and name)."""
    folder, name = os.path.split(path_s2)
    parent, scene = os.path.split(folder)
    return os.path.join(parent, scene.replace("s2_", "s1_", 1), name.replace("_s2_", "_s1_"))


@functools.lru_cache(maxsize=1)
def load_labels(path: str) -> dict:
    """The label pickle: S2 file name -> 17 class fractions."""
    try:
        with open(path, "rb") as f:
            labels = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise DatasetError(f"{path}: cannot read the SEN12MS label pickle ({type(e).__name__}: {e})") from e
    if not isinstance(labels, dict):
        raise DatasetError(f"{path}: holds a {type(labels).__name__}, expected a dict of S2 file name -> 17 fractions")
    return labels


def labels_of(fractions: np.ndarray, classes: int, threshold: float) -> tuple[int, list[int]]:
    """(single label, multi-hot indices) of 17 IGBP fractions, simplified to 10 classes if asked."""
    if classes == 10:
        fractions = np.bincount(SIMPLIFY, weights=fractions, minlength=10)
    return int(np.argmax(fractions)), [int(i) for i in np.flatnonzero(fractions >= threshold)]


def label_vector(labels: dict, name: str, where: str) -> np.ndarray:
    if name not in labels:
        raise BadPatch(f"{where}: patch {name} missing from the label pickle")
    vector = np.asarray(labels[name], np.float64).ravel()
    if vector.shape != (17,) or not np.all(np.isfinite(vector)):
        raise BadPatch(f"{where}: label of {name} is {vector.tolist()}, expected 17 finite IGBP fractions")
    return vector


def make_record(opts: Options, item: tuple[str, int, int]) -> PatchRecord:
    """Item: (S2 file name, tile row offset, tile column offset)."""
    name, row, col = item
    path = s2_path(opts.root, name)
    window = (row, col, opts.tile, opts.tile)
    image = read_raster(path, shape=(PATCH, PATCH), count=len(S2_BANDS), dtypes=("uint16",), window=window)
    image = image.transpose(1, 2, 0)
    if opts.s1:
        radar = read_raster(s1_path(path), shape=(PATCH, PATCH), count=2, dtypes=("float32",), window=window)
        image = np.concatenate([image.astype(np.float32), radar.transpose(1, 2, 0)], axis=-1)
    image = np.ascontiguousarray(image)
    single, multi = labels_of(label_vector(load_labels(opts.labels), name, opts.labels), opts.classes, opts.threshold)
    patch_id = f"{name[:-4]}_r{row}_c{col}"
    return PatchRecord(encode_record(image, patch_id, single, multi), patch_id, image)


def list_patches(root: str) -> list[str]:
    """S2 file names of every patch, by season, scene and patch number."""
    names = []
    for season in SEASONS:
        folder = os.path.join(root, season)
        if not os.path.isdir(folder):
            continue
        for scene in os.listdir(folder):
            if scene.startswith("s2_"):
                names.extend(f for f in os.listdir(os.path.join(folder, scene)) if _NAME.match(f))
    key = lambda n: (SEASONS.index(_NAME.match(n).group(1)), *map(int, _NAME.match(n).group(2, 3)))  # noqa: E731
    return sorted(names, key=key)


def _scene_of(name: str) -> tuple[str, int]:
    season, scene = _NAME.match(name).group(1, 2)
    return season, int(scene)


def assign_splits(names: list[str], split_dir: str | None, allow_partial: bool, problems: Problems
                  ) -> tuple[dict[str, list[str]], dict]:
    """Patch names per split, from official lists when given, else from the built-in scene lists."""
    if split_dir:
        lists = {s: find_list(split_dir, f"{s}_list", (".txt", ".pkl")) for s in ("train", "val", "test")}
        listed = {s: set(read_names(p)) - set(BROKEN) for s, p in lists.items() if p}
        if "test" not in listed:
            raise DatasetError(f"{split_dir}: no test_list.txt (or .pkl)")
        present = set(names)
        for split, members in listed.items():
            for name in sorted(members - present) if not allow_partial else ():
                problems.report(split, name, f"{lists[split]}: lists {name}, which is missing from the archive")
        if "train" not in listed:  # the official train list is the rest
            taken = set().union(*listed.values())
            listed["train"] = {n for n in names if n not in taken}
        splits = {s: [n for n in names if n in listed[s]] for s in ("train", "val", "test") if s in listed}
        return splits, {"kind": "lists", "files": {s: os.path.abspath(p) for s, p in lists.items() if p}}

    def in_scenes(name: str, scenes: dict) -> bool:
        season, scene = _scene_of(name)
        return scene in scenes.get(season, ())

    splits = {
        "train": [n for n in names if not in_scenes(n, HOLDOUT_SCENES) and not in_scenes(n, VALIDATION_SCENES)],
        "val": [n for n in names if in_scenes(n, VALIDATION_SCENES)],
        "test": [n for n in names if in_scenes(n, HOLDOUT_SCENES)],
    }
    return splits, {"kind": "official_scenes", "test": "SEN12MS_holdOutScenes.txt", "val": "ValidationScenes.txt"}


def build_job(args: argparse.Namespace) -> Job:
    if PATCH % args.tile:
        raise DatasetError(f"--tile {args.tile} does not divide the {PATCH} px patches")
    on_disk = list_patches(args.src)
    names = [n for n in on_disk if n not in BROKEN]
    if not names:
        raise DatasetError(f"{args.src}: no SEN12MS S2 patches (expected e.g. ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p30.tif)")
    labels = load_labels(os.path.abspath(args.labels))
    problems = Problems(args.skip_bad)
    by_split, split_method = assign_splits(names, args.split_dir, args.allow_partial, problems)
    notes = {"patches on disk in no split": len(names) - sum(len(v) for v in by_split.values())}
    offsets = [(r, c) for r in range(0, PATCH, args.tile) for c in range(0, PATCH, args.tile)]
    splits = {}
    for split, members in by_split.items():
        splits[split] = []
        for name in members:
            if name not in labels:
                problems.report(split, name, f"{s2_path(args.src, name)}: patch missing from the label pickle {args.labels}")
                continue
            splits[split].extend((name, r, c) for r, c in offsets)
    bands = list(S2_BANDS) + (list(S1_BANDS) if args.s1 else [])
    opts = Options(os.path.abspath(args.src), os.path.abspath(args.labels), args.s1, args.tile, args.classes, args.threshold)
    return Job(
        dataset="sen12ms", converter="sen12ms", version=VERSION, splits=splits,
        make_record=functools.partial(make_record, opts),
        manifest={
            "source": f"SEN12MS s2 (L1C){' + s1' if args.s1 else ''} at {os.path.abspath(args.src)}, "
                      f"{PATCH} px patches cut into {args.tile} px tiles",
            "bands": bands, "dtype": "float32" if args.s1 else "uint16", "shape": [args.tile, args.tile, len(bands)],
            "classes": list(IGBP_10 if args.classes == 10 else IGBP_17),
            "multi_label": args.task == "multi", "label_kinds": ["single", "multi"],
            "multi_label_threshold": args.threshold, "label_source": os.path.abspath(args.labels),
            "split_method": split_method, "tiles_per_patch": len(offsets), "gsd_m": 10,
        },
        options={**dataclasses.asdict(opts), "split_method": split_method},
        problems=problems,
        notes={"patches left out as broken (official code)": len(on_disk) - len(names), **notes},
    )


def main(argv: list[str] | None = None) -> dict:
    parser = converter_parser(__doc__)
    parser.add_argument("--labels", required=True, help="IGBP_probability_labels.pkl")
    parser.add_argument("--s1", action="store_true", help="append S1 VV, VH (records become float32)")
    parser.add_argument("--tile", type=int, default=128, help="tile size in px (256 keeps whole patches)")
    parser.add_argument("--classes", type=int, choices=(10, 17), default=10, help="simplified (10) or full IGBP")
    parser.add_argument("--task", choices=("multi", "single"), default="multi", help="the manifest's task label")
    parser.add_argument("--threshold", type=float, default=0.1, help="multi-label: minimum class fraction")
    parser.add_argument("--split-dir", help="folder with official {train,val,test}_list.txt or .pkl")
    parser.add_argument("--allow-partial", action="store_true",
                        help="with --split-dir: convert the listed patches found on disk instead of stopping")
    args = parser.parse_args(argv)
    try:
        return run(build_job(args), args)
    finally:
        load_labels.cache_clear()


if __name__ == "__main__":
    main_guard(main)
