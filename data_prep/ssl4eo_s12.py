"""SSL4EO-S12 v1.0 raw layout -> one record per location holding all its seasons (THWC).

    python -m data_prep.ssl4eo_s12 --src SSL4EO-S12 --modality s2c --out data/ssl4eo_s2c \\
        [--seasons 4] [--size 264] [--resample bilinear]

Layout: ``<s1|s2c|s2a>/<7-digit location>/<timestamp folder>/<band>.tif``; ``s2c`` is L1C (13 bands,
with B10), ``s2a`` L2A (12 bands), ``s1`` VV and VH (float32 dB). Bands come at their native
resolution (264/132/44 px for 10/20/60 m; some raw tiles have one extra row or column) and are all put
on one ``--size`` grid (default 264) with ``--resample``; a band already at that size is copied
bit-exact. A record is (T, H, W, C) with the T = ``--seasons`` timestamps of a location in date order
(the manifest's ``time_axis`` is 0 and the record header lists the dates), so a pipeline can draw two
seasons of one location as two views. ``--src`` may also be the modality folder itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re

import numpy as np

from data_prep.bands import S1_BANDS, S2_BANDS, S2_GSD, canonical_band
from data_prep.convert import Job, Problems, converter_parser, main_guard, run
from data_prep.geotiff import read_raster
from data_prep.resample import METHODS, resize
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import BadPatch, PatchRecord

VERSION = "1"
GRID = 264
MODALITIES = {
    "s2c": ("Sentinel-2 L1C", S2_BANDS, "uint16"),
    "s2a": ("Sentinel-2 L2A", tuple(b for b in S2_BANDS if b != "B10"), "uint16"),
    "s1": ("Sentinel-1 GRD", S1_BANDS, "float32"),
}
_DATE = re.compile(r"(\d{8}T\d{6})")


@dataclasses.dataclass(frozen=True)
class Options:
    root: str
    modality: str
    seasons: int
    size: int
    method: str


def band_file(band: str) -> str:
    """``B01`` -> ``B1.tif``, ``B8A`` -> ``B8A.tif``, ``VV`` -> ``VV.tif`` (the raw file names)."""
    if band.startswith("B") and band[1:].isdigit():
        return f"B{int(band[1:])}.tif"
    return f"{band}.tif"


def native_size(band: str) -> int:
    return GRID if band in S1_BANDS else GRID * 10 // S2_GSD[band]


def timestamps(folder: str) -> list[tuple[str, str]]:
    """(date, folder name) of a location's timestamp folders, in date order."""
    found = []
    for name in os.listdir(folder):
        match = _DATE.search(name)
        if match and os.path.isdir(os.path.join(folder, name)):
            found.append((match.group(1), name))
    return sorted(found)


def read_season(folder: str, bands: tuple[str, ...], dtype: str, size: int, method: str) -> np.ndarray:
    planes = []
    for band in bands:
        n = native_size(band)
        accepted = [(n + dr, n + dc) for dr in (0, 1) for dc in (0, 1)]  # tiles with one extra row/column
        pixels = read_raster(os.path.join(folder, band_file(band)), shape=accepted, count=1, dtypes=(dtype,))
        planes.append(resize(pixels[0], (size, size), method))
    return np.stack(planes, axis=-1)


def make_record(opts: Options, location: str) -> PatchRecord:
    _, bands, dtype = MODALITIES[opts.modality]
    folder = os.path.join(opts.root, location)
    stamps = timestamps(folder)
    if len(stamps) != opts.seasons:
        raise BadPatch(f"{folder}: {len(stamps)} timestamp folders, expected {opts.seasons}")
    image = np.stack([read_season(os.path.join(folder, name), bands, dtype, opts.size, opts.method)
                      for _, name in stamps])
    dates = [date for date, _ in stamps]
    return PatchRecord(encode_record(image, location, extra={"dates": dates}), location, image)


def modality_root(src: str, modality: str) -> str:
    for root in (os.path.join(src, modality), src):
        if os.path.basename(os.path.normpath(root)) == modality and os.path.isdir(root):
            return root
    raise DatasetError(f"{src}: no {modality}/ folder (expected SSL4EO-S12's <s1|s2c|s2a>/<location>/<timestamp>/)")


def build_job(args: argparse.Namespace) -> Job:
    root = modality_root(args.src, args.modality)
    locations = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name.isdigit())
    if not locations:
        raise DatasetError(f"{root}: no location folders (7-digit ids such as 0000200)")
    title, bands, dtype = MODALITIES[args.modality]
    exact = [b for b in bands if native_size(b) == args.size]
    opts = Options(os.path.abspath(root), args.modality, args.seasons, args.size, args.resample)
    return Job(
        dataset="ssl4eo_s12", converter="ssl4eo_s12", version=VERSION, splits={"train": locations},
        make_record=functools.partial(make_record, opts),
        manifest={
            "source": f"SSL4EO-S12 v1.0 {args.modality} ({title}) at {os.path.abspath(root)}",
            "modality": args.modality,
            "bands": [canonical_band(b) for b in bands], "dtype": dtype,
            "shape": [args.seasons, args.size, args.size, len(bands)],
            "time_axis": 0, "seasons": args.seasons, "season_order": "chronological (dates in each record header)",
            "classes": [], "multi_label": False, "label_kinds": [],
            "resampling": {"method": args.resample, "size": args.size, "exact_bands": exact,
                           "resampled_bands": [b for b in bands if b not in exact],
                           "note": "tiles whose 10 m bands have an extra row/column are resampled too"},
        },
        options={**dataclasses.asdict(opts)},
        problems=Problems(args.skip_bad),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = converter_parser(__doc__)
    parser.add_argument("--modality", choices=sorted(MODALITIES), required=True)
    parser.add_argument("--seasons", type=int, default=4, help="timestamps per location (locations with others are bad)")
    parser.add_argument("--size", type=int, default=GRID, help="output grid in px (264 = 10 m)")
    parser.add_argument("--resample", choices=METHODS, default="bilinear", help="method for bands not on the grid")
    args = parser.parse_args(argv)
    return run(build_job(args), args)


if __name__ == "__main__":
    main_guard(main)
