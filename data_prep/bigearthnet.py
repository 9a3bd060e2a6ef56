"""BigEarthNet-S2 v1.0 and v2.0 (reBEN), optionally with Sentinel-1 -> sharded ArrayRecord + manifest.

    # v1.0: folder per patch, labels from each patch's json, official split + exclusion lists
    python -m data_prep.bigearthnet --version 1 --src BigEarthNet-v1.0 --splits LISTS_DIR --out data/ben \\
        [--s1-src BigEarthNet-S1-v1.0] [--classes 19|43] [--size 120] [--resample bilinear]
    # v2.0: BigEarthNet-S2/<tile>/<patch>/, labels and splits from metadata.parquet
    python -m data_prep.bigearthnet --version 2 --src reBEN_ROOT --out data/ben2 [--s1] [--size 128]

``LISTS_DIR`` holds ``train.csv``, ``val.csv``, ``test.csv`` (one S2 patch name per line, or the
BigEarthNet-MM ``S2name,S1name`` form; ``.csv.bz2`` as shipped by bigearthnet-common works too) and,
when present, the exclusion lists ``patches_with_seasonal_snow.csv``, ``patches_with_cloud_and_shadow.csv``
and ``patches_with_no_19_class_targets.csv``; ``s1_s2_name_country_season.csv`` pairs S1 with S2.

The 12 bands (B01..B08, B8A, B09, B11, B12; uint16 L2A DN) come at 120/60/20 px (10/20/60 m) and are
put on one ``--size`` grid (default 120, the 10 m grid) with ``--resample`` (default bilinear, as
TorchGeo; the SSL4EO review used bicubic to 128): at size 120 the 10 m bands are copied bit-exact and
the others resampled deterministically (``data_prep.resample``). With S1 (VV, VH; float32 dB, appended
after the S2 bands) the record dtype is float32, which holds every uint16 value exactly.
Labels are multi-hot, 19 classes in the original nomenclature order (or the 43 CORINE classes, v1).
``--allow-partial`` converts what is on disk when only part of the archive was downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os

import numpy as np

from data_prep import bigearthnet_classes as nomenclature
from data_prep.convert import Job, Problems, converter_parser, main_guard, run
from data_prep.geotiff import read_raster
from data_prep.lists import find_list, read_names, read_rows
from data_prep.resample import METHODS, resize
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import BadPatch, PatchRecord

VERSION = "1"
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
NATIVE_SIZE = {"B01": 20, "B09": 20, "B02": 120, "B03": 120, "B04": 120, "B08": 120,
               "B05": 60, "B06": 60, "B07": 60, "B8A": 60, "B11": 60, "B12": 60}
S1_BANDS = ("VV", "VH")
GRID = 120
SPLITS = ("train", "val", "test")
EXCLUSION_LISTS = ("patches_with_seasonal_snow", "patches_with_cloud_and_shadow", "patches_with_no_19_class_targets")
V2_SPLITS = {"train": "train", "validation": "val", "test": "test"}
V2_S2_DIR, V2_S1_DIR = "BigEarthNet-S2", "BigEarthNet-S1"
V2_METADATA = "metadata.parquet"
V2_EXCLUDED = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"


@dataclasses.dataclass(frozen=True)
class Options:
    s2_root: str
    s1_root: str | None
    size: int
    method: str
    classes: int


def v1_labels(folder: str, name: str, classes: int) -> list[int]:
    """Multi-hot class indices from ``<name>_labels_metadata.json`` (43 or 19 classes)."""
    path = os.path.join(folder, f"{name}_labels_metadata.json")
    try:
        with open(path) as f:
            names = json.load(f)["labels"]
    except FileNotFoundError:
        raise BadPatch(f"{path}: label file missing") from None
    except (ValueError, KeyError, TypeError) as e:
        raise BadPatch(f"{path}: not a BigEarthNet labels json ({type(e).__name__}: {e})") from None
    try:
        labels = nomenclature.indices_43(names, path)
    except ValueError as e:
        raise BadPatch(str(e)) from None
    if classes == 19:
        labels = nomenclature.to_19(labels)
        if not labels:
            raise BadPatch(f"{path}: none of the labels {names} has a 19-class target "
                           "(the official lists exclude such patches)")
    return labels


def read_s2(folder: str, name: str, size: int, method: str) -> np.ndarray:
    """The 12 bands of one patch folder on the ``size`` grid, HWC uint16."""
    planes = []
    for band in BANDS:
        n = NATIVE_SIZE[band]
        pixels = read_raster(os.path.join(folder, f"{name}_{band}.tif"), shape=(n, n), count=1, dtypes=("uint16",))
        planes.append(resize(pixels[0], (size, size), method))
    return np.stack(planes, axis=-1)


def read_s1(folder: str, name: str, size: int, method: str) -> np.ndarray:
    """VV and VH of one S1 patch folder on the ``size`` grid, HWC float32."""
    planes = []
    for band in S1_BANDS:
        pixels = read_raster(os.path.join(folder, f"{name}_{band}.tif"), shape=(GRID, GRID), count=1,
                             dtypes=("float32",))
        planes.append(resize(pixels[0], (size, size), method))
    return np.stack(planes, axis=-1)


def make_record(opts: Options, item: tuple[str, str, list[int] | None]) -> PatchRecord:
    """Item: (S2 folder relative to the S2 root, S1 folder or "", labels or None to read the v1 json)."""
    s2_rel, s1_rel, labels = item
    name = os.path.basename(s2_rel)
    folder = os.path.join(opts.s2_root, s2_rel)
    if labels is None:
        labels = v1_labels(folder, name, opts.classes)
    image = read_s2(folder, name, opts.size, opts.method)
    if opts.s1_root is not None:
        s1 = read_s1(os.path.join(opts.s1_root, s1_rel), os.path.basename(s1_rel), opts.size, opts.method)
        image = np.concatenate([image.astype(np.float32), s1], axis=-1)
    return PatchRecord(encode_record(image, name, -1, labels), name, image)


def _list_dirs(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: folder not found")
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def _v1_s1_pairs(lists_dir: str, s1_root: str) -> dict[str, str]:
    """S2 name -> S1 name, from s1_s2_name_country_season.csv or else from the S1 jsons."""
    path = find_list(lists_dir, "s1_s2_name_country_season")
    if path is not None:
        rows = read_rows(path)
        return {row[1]: row[0] for row in rows if row[:2] != ["s1_name", "s2_name"]}
    pairs = {}
    for s1_name in _list_dirs(s1_root):
        json_path = os.path.join(s1_root, s1_name, f"{s1_name}_labels_metadata.json")
        try:
            with open(json_path) as f:
                pairs[json.load(f)["corresponding_s2_patch"]] = s1_name
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"{json_path}: cannot read corresponding_s2_patch ({e})") from e
    return pairs


def _missing(problems: Problems, notes: dict, allow_partial: bool, split: str, name: str, folder: str,
             listed_in: str) -> None:
    """A listed patch without its folder: an error (skipped with --skip-bad), or counted with --allow-partial."""
    if not allow_partial:
        problems.report(split, name, f"{folder}: patch folder missing (listed in {listed_in})")
    notes["listed but not on disk"] += 1


def v1_splits(args: argparse.Namespace, s1_root: str | None, problems: Problems) -> tuple[dict[str, list], dict]:
    """Items per split from the official lists, minus the exclusion lists; counts for the summary."""
    lists_dir = args.splits or args.src
    on_disk = set(_list_dirs(args.src))
    excluded: set[str] = set()
    exclusion_files = []
    for stem in EXCLUSION_LISTS:
        path = find_list(lists_dir, stem)
        if path is not None:
            excluded.update(read_names(path))
            exclusion_files.append(os.path.basename(path))
    pairs = _v1_s1_pairs(lists_dir, s1_root) if s1_root else {}
    s1_on_disk = set(_list_dirs(s1_root)) if s1_root else set()
    splits: dict[str, list] = {}
    notes = {"listed in a split and in an exclusion list (dropped)": 0, "listed but not on disk": 0,
             "on disk, in an exclusion list": len(on_disk & excluded)}
    for split in SPLITS:
        path = find_list(lists_dir, split)
        if path is None:
            raise DatasetError(
                f"{lists_dir}: no {split}.csv split list. Pass --splits with the folder of the official "
                "train/val/test.csv (bigearthnet-common ships them as .csv.bz2)."
            )
        splits[split] = []
        for row in read_rows(path):
            name = row[0]
            if name in excluded:
                notes["listed in a split and in an exclusion list (dropped)"] += 1
                continue
            if name not in on_disk:
                _missing(problems, notes, args.allow_partial, split, name, os.path.join(args.src, name), path)
                continue
            s1_name = ""
            if s1_root:
                s1_name = row[1] if len(row) > 1 and row[1] else pairs.get(name, "")
                if not s1_name or s1_name not in s1_on_disk:
                    problems.report(split, name, f"{os.path.join(args.src, name)}: no Sentinel-1 partner "
                                                 f"{s1_name or '(unknown)'} in {s1_root}")
                    continue
            splits[split].append((name, s1_name, None))
    listed = {item[0] for items in splits.values() for item in items}
    notes["on disk but in no split list"] = len(on_disk - listed - excluded)
    method = {"kind": "official_lists", "dir": os.path.abspath(lists_dir), "exclusions": exclusion_files}
    return splits, {"notes": notes, "split_method": method}


def v2_splits(args: argparse.Namespace, s1_root: str | None, problems: Problems) -> tuple[dict[str, list], dict]:
    """Items per split from metadata.parquet; patches on disk must be in the metadata."""
    import pandas as pd

    metadata = args.metadata or os.path.join(args.src, V2_METADATA)
    if not os.path.isfile(metadata):
        raise DatasetError(f"{metadata}: BigEarthNet v2 metadata not found; pass --metadata")
    try:
        table = pd.read_parquet(metadata, columns=["patch_id", "labels", "split", "s1_name"])
    except Exception as e:
        raise DatasetError(f"{metadata}: cannot read the metadata parquet ({e})") from e
    excluded_path = args.excluded_metadata or os.path.join(os.path.dirname(metadata), V2_EXCLUDED)
    excluded = set()
    if os.path.isfile(excluded_path):
        excluded = set(pd.read_parquet(excluded_path, columns=["patch_id"])["patch_id"])
    s2_root = os.path.join(args.src, V2_S2_DIR)
    on_disk = {p: f"{tile}/{p}" for tile in _list_dirs(s2_root) for p in _list_dirs(os.path.join(s2_root, tile))}
    known = set(table["patch_id"])
    for patch in sorted(set(on_disk) - known - excluded):
        problems.report("none", patch, f"{os.path.join(s2_root, on_disk[patch])}: patch missing from the metadata {metadata}")
    splits: dict[str, list] = {s: [] for s in SPLITS}
    notes = {"listed but not on disk": 0, "on disk, excluded (snow/cloud/shadow)": len(set(on_disk) & excluded)}
    if args.allow_partial:
        present = table["patch_id"].isin(set(on_disk))
        notes["listed but not on disk"] = int((~present).sum())
        table = table[present]
    for patch, labels, split, s1_name in table.itertuples(index=False):
        if split not in V2_SPLITS:
            raise DatasetError(f"{metadata}: patch {patch} has split {split!r}, not one of {sorted(V2_SPLITS)}")
        ours = V2_SPLITS[split]
        if patch not in on_disk:
            folder = os.path.join(s2_root, patch.rsplit("_", 2)[0], patch)
            _missing(problems, notes, args.allow_partial, ours, patch, folder, metadata)
            continue
        try:
            indices = nomenclature.indices_19(list(labels), f"{metadata} (patch {patch})")
        except ValueError as e:
            problems.report(ours, patch, str(e))
            continue
        s1_rel = ""
        if s1_root:
            s1_rel = f"{s1_name.rsplit('_', 3)[0]}/{s1_name}"
            if not os.path.isdir(os.path.join(s1_root, s1_rel)):
                problems.report(ours, patch, f"{os.path.join(s1_root, s1_rel)}: Sentinel-1 partner of {patch} missing")
                continue
        splits[ours].append((on_disk[patch], s1_rel, indices))
    method = {"kind": "metadata", "file": os.path.abspath(metadata)}
    return splits, {"notes": notes, "split_method": method}


def build_job(args: argparse.Namespace) -> Job:
    if args.version == 2 and args.classes == 43:
        raise DatasetError("BigEarthNet v2 has no 43-class labels (its metadata holds the 19 classes); use --classes 19")
    problems = Problems(args.skip_bad)
    if args.version == 1:
        s1_root = args.s1_src
        s2_root = args.src
        splits, info = v1_splits(args, s1_root, problems)
    else:
        s1_root = (args.s1_src or os.path.join(args.src, V2_S1_DIR)) if (args.s1 or args.s1_src) else None
        s2_root = os.path.join(args.src, V2_S2_DIR)
        splits, info = v2_splits(args, s1_root, problems)
    bands = list(BANDS) + (list(S1_BANDS) if s1_root else [])
    native = [b for b in BANDS if NATIVE_SIZE[b] == args.size] + ([*S1_BANDS] if s1_root and args.size == GRID else [])
    classes = nomenclature.CLASSES_19 if args.classes == 19 else nomenclature.CLASSES_43
    opts = Options(os.path.abspath(s2_root), os.path.abspath(s1_root) if s1_root else None, args.size,
                   args.resample, args.classes)
    return Job(
        dataset="bigearthnet", converter="bigearthnet", version=VERSION, splits=splits,
        make_record=functools.partial(make_record, opts),
        manifest={
            "source": f"BigEarthNet v{args.version}.0 S2 L2A{' + S1' if s1_root else ''} at {os.path.abspath(args.src)}",
            "archive_version": f"{args.version}.0",
            "bands": bands, "dtype": "float32" if s1_root else "uint16", "shape": [args.size, args.size, len(bands)],
            "classes": list(classes), "class_order": "original nomenclature order (Sumbul et al.)",
            "multi_label": True, "label_kinds": ["multi"],
            "resampling": {"method": args.resample, "size": args.size, "exact_bands": native,
                           "resampled_bands": [b for b in bands if b not in native]},
            "split_method": info["split_method"], "gsd_m": 10 * GRID / args.size,
        },
        options={**dataclasses.asdict(opts), "version": args.version, "split_method": info["split_method"],
                 "allow_partial": args.allow_partial},
        problems=problems, notes=info["notes"],
    )


def main(argv: list[str] | None = None) -> dict:
    parser = converter_parser(__doc__)
    parser.add_argument("--version", type=int, choices=(1, 2), required=True, help="archive version")
    parser.add_argument("--splits", help="v1: folder of the official split and exclusion lists (default: --src)")
    parser.add_argument("--metadata", help=f"v2: the metadata parquet (default: SRC/{V2_METADATA})")
    parser.add_argument("--excluded-metadata", help=f"v2: snow/cloud parquet (default: beside --metadata, {V2_EXCLUDED})")
    parser.add_argument("--s1", action="store_true", help="v2: add Sentinel-1 VV, VH from SRC/BigEarthNet-S1")
    parser.add_argument("--s1-src", help="Sentinel-1 folder (v1: BigEarthNet-S1-v1.0; implies --s1)")
    parser.add_argument("--classes", type=int, choices=(19, 43), default=19)
    parser.add_argument("--size", type=int, default=GRID, help="output grid in px (120 = 10 m; the review used 128)")
    parser.add_argument("--resample", choices=METHODS, default="bilinear", help="method for bands not on the grid")
    parser.add_argument("--allow-partial", action="store_true",
                        help="convert the listed patches found on disk (a partial download) instead of stopping")
    args = parser.parse_args(argv)
    return run(build_job(args), args)


if __name__ == "__main__":
    main_guard(main)
