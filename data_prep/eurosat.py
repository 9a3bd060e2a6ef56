"""EuroSAT-MS (13-band Sentinel-2 L1C tiles, 64x64, 10 classes) -> sharded ArrayRecord + manifest.

    python -m data_prep.eurosat --src EuroSAT_MS --out data/eurosat \\
        [--split-dir DIR_WITH_eurosat-{train,val,test}.txt] [--split-seed 0]

``--src`` is either archive root: ``EuroSAT_MS/<Class>/<Class>_<n>.tif`` (Zenodo) or DFKI's
``EuroSATallBands.zip`` tree ``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/...``
(the folder holding the class folders, or any folder above it on those paths).

The tifs store B8A as their LAST band (B01..B12, B8A); records hold the canonical order B01..B08, B8A,
B09..B12 (13 bands, B10 kept), uint16 DN exactly as in the file. Splits come from the lists of
``--split-dir`` (one file name per line, ``.jpg`` or ``.tif``; TorchGeo's ``eurosat-*.txt``), or,
without lists, from a per-class seeded random 60/20/20 split; the manifest records which.
"""

from __future__ import annotations

import argparse
import functools
import os
import re

import numpy as np

from data_prep.bands import S2_BANDS
from data_prep.convert import Job, Problems, converter_parser, main_guard, run
from data_prep.geotiff import read_raster
from data_prep.lists import find_list, read_names, stratified_split
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import PatchRecord

VERSION = "1"
CLASSES = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)
FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
FILE_TO_CANONICAL = [FILE_BANDS.index(b) for b in S2_BANDS]  # B8A (file index 12) moves to index 8
ROOTS = ("", "EuroSAT_MS", "EuroSATallBands", "ds/images/remote_sensing/otherDatasets/sentinel_2/tif",
         "EuroSATallBands/ds/images/remote_sensing/otherDatasets/sentinel_2/tif")
SPLITS = ("train", "val", "test")
SIZE = 64


def find_root(src: str) -> str:
    """The folder that holds the class folders, for either archive layout."""
    for rel in ROOTS:
        root = os.path.join(src, rel)
        if os.path.isdir(root) and any(os.path.isdir(os.path.join(root, c)) for c in CLASSES):
            return root
    raise DatasetError(
        f"{src}: no EuroSAT class folders (e.g. {CLASSES[0]}/) in it or in "
        + ", ".join(os.path.join(src, r) for r in ROOTS if r)
    )


def list_tiles(root: str) -> list[tuple[str, int]]:
    """(relative path, class index) of every tile, classes in order, tiles in natural order."""
    tiles = []
    for name in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, name)) or name.startswith("."):
            continue
        if name not in CLASSES:
            raise DatasetError(f"{os.path.join(root, name)}: unknown class folder {name!r}; EuroSAT has {', '.join(CLASSES)}")
    for label, cls in enumerate(CLASSES):
        folder = os.path.join(root, cls)
        names = sorted((f for f in os.listdir(folder) if f.lower().endswith(".tif")) if os.path.isdir(folder) else [],
                       key=lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f)])
        tiles.extend((f"{cls}/{f}", label) for f in names)
    return tiles


def split_by_lists(tiles: list[tuple[str, int]], split_dir: str, prefix: str, problems: Problems) -> dict[str, list]:
    """Splits from ``<prefix>-{train,val,test}.txt``; a listed tile missing on disk is an error."""
    by_stem = {os.path.splitext(os.path.basename(rel))[0]: (rel, label) for rel, label in tiles}
    splits: dict[str, list] = {}
    for split in SPLITS:
        path = find_list(split_dir, f"{prefix}-{split}", (".txt", ".csv"))
        if path is None:
            raise DatasetError(f"{split_dir}: no {prefix}-{split}.txt split list")
        splits[split] = []
        for name in read_names(path):
            stem = os.path.splitext(os.path.basename(name))[0]
            if stem not in by_stem:
                problems.report(split, name, f"{path}: lists {name}, which is missing from the archive")
                continue
            splits[split].append(by_stem[stem])
    return splits


def make_record(root: str, item: tuple[str, int]) -> PatchRecord:
    rel, label = item
    path = os.path.join(root, rel)
    pixels = read_raster(path, shape=(SIZE, SIZE), count=len(FILE_BANDS), dtypes=("uint16",))
    image = np.ascontiguousarray(pixels[FILE_TO_CANONICAL].transpose(1, 2, 0))
    patch_id = os.path.splitext(os.path.basename(rel))[0]
    return PatchRecord(encode_record(image, patch_id, label), patch_id, image)


def build_job(args: argparse.Namespace) -> Job:
    root = find_root(args.src)
    tiles = list_tiles(root)
    if not tiles:
        raise DatasetError(f"{root}: the class folders hold no .tif tiles")
    problems = Problems(args.skip_bad)
    if args.split_dir:
        splits = split_by_lists(tiles, args.split_dir, args.split_prefix, problems)
        split_method = {"kind": "lists", "dir": os.path.abspath(args.split_dir), "prefix": args.split_prefix}
    else:
        fractions = [float(f) for f in args.split_fractions.split(",")]
        parts = stratified_split([label for _, label in tiles], fractions, args.split_seed)
        splits = {name: [tiles[i] for i in part] for name, part in zip(SPLITS, parts)}
        split_method = {"kind": "stratified_random", "seed": args.split_seed, "fractions": fractions}
    listed = {rel for items in splits.values() for rel, _ in items}
    if len(listed) < sum(len(v) for v in splits.values()):
        raise DatasetError(f"The split lists of {args.split_dir} name some tiles more than once or in two splits.")
    return Job(
        dataset="eurosat", converter="eurosat", version=VERSION, splits=splits,
        make_record=functools.partial(make_record, root),
        manifest={
            "source": f"EuroSAT-MS (Sentinel-2 L1C, 13 bands) at {os.path.abspath(root)}",
            "bands": list(S2_BANDS), "dtype": "uint16", "shape": [SIZE, SIZE, len(S2_BANDS)],
            "classes": list(CLASSES), "multi_label": False, "label_kinds": ["single"],
            "split_method": split_method, "band_order_note": "file band 13 (B8A) moved after B08",
            "gsd_m": 10,
        },
        options={"src": os.path.abspath(root), "split_method": split_method},
        problems=problems,
        notes={"tiles on disk not in any split": len(tiles) - len(listed)} if args.split_dir else {},
    )


def main(argv: list[str] | None = None) -> dict:
    parser = converter_parser(__doc__)
    parser.add_argument("--split-dir", help="folder with <prefix>-{train,val,test}.txt split lists")
    parser.add_argument("--split-prefix", default="eurosat", help="list name prefix (e.g. eurosat-spatial)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the stratified split (no lists)")
    parser.add_argument("--split-fractions", default="0.6,0.2,0.2", help="train,val,test fractions (no lists)")
    args = parser.parse_args(argv)
    return run(build_job(args), args)


if __name__ == "__main__":
    main_guard(main)
