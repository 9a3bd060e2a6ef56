"""Any folder of Sentinel-2 GeoTIFF scenes (e.g. Major-TOM cells) -> unlabeled patches.

    python -m data_prep.scenes --src MajorTOM/S2L2A --out data/scenes --patch-size 256 [--stride 256] \\
        [--bands B02,B03,B04,B08] [--max-nodata 0] [--max-cloud 0.1] [--offset auto|remove|keep]

A scene is either a folder with one file per band (``B02.tif``, ``B2.tif``, ``T33NZA_..._B02_10m.jp2``;
bands at their native resolution), or a multi-band GeoTIFF whose band names come from its band
descriptions or from ``--bands`` (in file order). Every scene below ``--src`` is found recursively.
Bands are put on the grid of the finest band with ``--resample`` (windowed, so a patch costs the same
in a 1 km cell and a 110 km tile); patches of ``--patch-size`` are cut every ``--stride`` pixels,
fully inside the scene, rows first. A patch is left out (counted in filtered.json, not an error) when
more than ``--max-nodata`` of its pixels are nodata in any band (value ``--nodata`` or the file's
nodata tag), or more than ``--max-cloud`` of them are flagged in the scene's ``--cloud-mask`` file
(default ``cloud_mask.tif``; any non-zero value counts as cloud unless ``--cloud-values`` is given).

Processing baseline 04.00 (from 2022-01-25 on) adds +1000 to every L1C/L2A DN (``RADIO_ADD_OFFSET``/
``BOA_ADD_OFFSET`` = -1000). ``--offset auto`` (default) removes it from the scenes that carry it, so all
scenes share the old convention: the ``*_ADD_OFFSET`` tags when the file has them, else the ``_Nxxyy_``
baseline in the product name (N9999, locally processed, says nothing), else the acquisition date. As in
the usual harmonisation, values below the offset become 0. ``remove`` and ``keep`` force the choice;
the manifest lists the decision per scene. Other pixel values are stored as in the files.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
from typing import Any

import numpy as np

from data_prep.bands import canonical_band, s2_sorted
from data_prep.convert import Job, Problems, converter_parser, main_guard, run
from data_prep.geotiff import raster_info, read_raster
from data_prep.resample import METHODS, resample_window, source_window
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import BadPatch, Filtered, PatchRecord

VERSION = "1"
OFFSET = 1000
OFFSET_FROM = "20220125"  # first acquisitions of processing baseline 04.00
CACHE_PIXELS = 1 << 23  # bands up to this size (e.g. a 2896 px square) are read whole, once per scene
_BAND_FILE = re.compile(r"^(?:.*[_-])?(B0?\d{1,2}|B8A)(?:_\d+m)?\.(?:tif|tiff|jp2)$", re.IGNORECASE)
_BASELINE = re.compile(r"_N(\d{4})_")
_SENSING = re.compile(r"MSIL\w{2}_(\d{8})T\d{6}")  # the sensing date of a product name (not the generation date)


@dataclasses.dataclass(frozen=True)
class Options:
    scenes: tuple[dict[str, Any], ...]
    bands: tuple[str, ...]
    patch: int
    method: str
    nodata: float
    max_nodata: float
    max_cloud: float
    cloud_values: tuple[int, ...] | None


def offset_of(path: str, tags: dict[str, str], mode: str) -> tuple[int, str]:
    """The DN offset to remove from a scene, and why."""
    if mode != "auto":
        return (OFFSET if mode == "remove" else 0), f"--offset {mode}"
    for key, value in tags.items():
        if key.upper().startswith(("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")):
            return int(-float(value)), f"tag {key}={value}"
    baselines = [b for b in _BASELINE.findall(path) if b != "9999"]
    if baselines:
        baseline = baselines[-1]
        return (OFFSET if int(baseline) >= 400 else 0), f"processing baseline N{baseline}"
    dates = _SENSING.findall(path)
    if dates:
        return (OFFSET if dates[-1] >= OFFSET_FROM else 0), f"sensed {dates[-1]}"
    return 0, "no baseline, date or offset tag found: kept as is"


def _band_files(folder: str, files: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in files:
        match = _BAND_FILE.match(name)
        if match:
            band = canonical_band(match.group(1))
            if band in found:
                raise DatasetError(f"{folder}: two files for band {band}: {found[band]} and {name}")
            found[band] = name
    return found


def find_scenes(src: str, bands_arg: list[str] | None) -> list[dict[str, Any]]:
    """Per-band folders (>= 2 band files) and multi-band GeoTIFFs below ``src``, in path order."""
    scenes = []
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        band_files = _band_files(folder, sorted(files))
        rel = os.path.relpath(folder, src)
        if len(band_files) >= 2:
            scenes.append({"name": rel, "kind": "bands", "folder": folder, "files": band_files})
            continue
        for name in sorted(files):
            if name.lower().endswith((".tif", ".tiff")) and "mask" not in name.lower():
                info = raster_info(os.path.join(folder, name))
                if info["count"] > 1:
                    scenes.append({"name": os.path.normpath(os.path.join(rel, name)), "kind": "multiband",
                                   "folder": folder, "file": name, "info": info})
    return scenes


def describe(scene: dict[str, Any], bands: list[str] | None, args: argparse.Namespace) -> dict[str, Any]:
    """Band paths, sizes, grid, nodata, cloud mask and offset of one scene; checks them."""
    folder = scene["folder"]
    if scene["kind"] == "bands":
        missing = [b for b in bands if b not in scene["files"]]
        if missing:
            raise BadPatch(f"{folder}: no file for band(s) {missing} (found {sorted(scene['files'])})")
        infos = {b: raster_info(os.path.join(folder, scene["files"][b])) for b in bands}
        sources = {b: [os.path.join(folder, scene["files"][b]), 1] for b in bands}
    else:
        info = scene["info"]
        path = os.path.join(folder, scene["file"])
        names = args.bands or [d or "" for d in info["descriptions"]]
        try:
            names = [canonical_band(n) for n in names]
        except ValueError as e:
            raise BadPatch(f"{path}: cannot name its bands ({e}); pass --bands in file order") from None
        if len(names) != info["count"]:
            raise BadPatch(f"{path}: {info['count']} bands, but {len(names)} names")
        missing = [b for b in bands if b not in names]
        if missing:
            raise BadPatch(f"{path}: lacks band(s) {missing}")
        infos = {b: info for b in bands}
        sources = {b: [path, names.index(b) + 1] for b in bands}
    ref = max(bands, key=lambda b: infos[b]["height"] * infos[b]["width"])
    height, width = infos[ref]["height"], infos[ref]["width"]
    for band in bands:
        cell = (infos[ref]["bounds"][2] - infos[ref]["bounds"][0]) / width
        if max(abs(a - b) for a, b in zip(infos[band]["bounds"], infos[ref]["bounds"])) > cell / 2:
            raise BadPatch(f"{sources[band][0]}: footprint {infos[band]['bounds']} differs from {ref}'s {infos[ref]['bounds']}")
    dtypes = {infos[b]["dtype"] for b in bands}
    if len(dtypes) != 1:
        raise BadPatch(f"{folder}: bands have different dtypes {sorted(dtypes)}")
    mask = os.path.join(folder, args.cloud_mask) if scene["kind"] == "bands" else None
    if mask and os.path.isfile(mask):
        info = raster_info(mask)
        if [info["height"], info["width"]] != [height, width]:
            raise BadPatch(f"{mask}: cloud mask is {info['height']}x{info['width']} px, the scene grid {height}x{width}")
    tags = {k: v for b in bands for k, v in infos[b]["tags"].items()}
    offset, why = offset_of(os.path.join(scene["name"]), tags, args.offset)
    nodata = {infos[b]["nodata"] for b in bands if infos[b]["nodata"] is not None}
    return {
        "name": scene["name"], "sources": sources, "grid": [height, width],
        "sizes": {b: [infos[b]["height"], infos[b]["width"]] for b in bands},
        "dtype": dtypes.pop(), "mask": mask if mask and os.path.isfile(mask) else None,
        "offset": offset, "offset_reason": why, "nodata": sorted({args.nodata, *nodata}),
    }


@functools.lru_cache(maxsize=32)
def _whole_band(path: str, index: int) -> np.ndarray:
    return read_raster(path)[index - 1]


def read_window(path: str, index: int, size: tuple[int, int], window: tuple[int, int, int, int]) -> np.ndarray:
    """A window of one band; bands of small scenes are read whole once (patches of a scene are
    consecutive items, and a compressed tile would otherwise be decoded again for every patch)."""
    if size[0] * size[1] <= CACHE_PIXELS:
        row, col, height, width = window
        return _whole_band(path, index)[row : row + height, col : col + width]
    return read_raster(path, window=window)[index - 1]


def read_patch_band(scene: dict[str, Any], band: str, row: int, col: int, patch: int, method: str) -> np.ndarray:
    path, index = scene["sources"][band]
    size, grid, window = tuple(scene["sizes"][band]), tuple(scene["grid"]), (row, col, patch, patch)
    if size == grid:
        return read_window(path, index, size, window)
    src = source_window(size, grid, window, method)
    pixels = read_window(path, index, size, src)
    return resample_window(pixels, size, grid, window, method, src_offset=src[:2])


def make_record(opts: Options, item: tuple[int, int, int]) -> PatchRecord:
    """Item: (scene index, row, column) of the patch's top-left pixel on the scene's grid."""
    index, row, col = item
    scene = opts.scenes[index]
    image = np.stack([read_patch_band(scene, b, row, col, opts.patch, opts.method) for b in opts.bands], axis=-1)
    nodata = np.isin(image, scene["nodata"]).any(axis=-1).mean()
    if nodata > opts.max_nodata:
        raise Filtered(f"nodata {nodata:.1%} > {opts.max_nodata:.1%}")
    if scene["mask"] and opts.max_cloud < 1:
        mask = read_window(scene["mask"], 1, tuple(scene["grid"]), (row, col, opts.patch, opts.patch))
        cloudy = (np.isin(mask, opts.cloud_values) if opts.cloud_values else mask != 0).mean()
        if cloudy > opts.max_cloud:
            raise Filtered(f"cloud {cloudy:.1%} > {opts.max_cloud:.1%}")
    if scene["offset"]:
        image = (np.maximum(image, scene["offset"]) - scene["offset"]).astype(image.dtype)
    patch_id = f"{scene['name']}/r{row}_c{col}"
    return PatchRecord(encode_record(image, patch_id), patch_id, image)


def build_job(args: argparse.Namespace) -> Job:
    args.bands = [canonical_band(b) for b in args.bands.split(",")] if args.bands else None
    found = find_scenes(args.src, args.bands)
    if not found:
        raise DatasetError(f"{args.src}: no scenes (folders of band files such as B02.tif, or multi-band GeoTIFFs)")
    first = found[0]
    bands = s2_sorted(args.bands or (first["files"] if first["kind"] == "bands" else
                                     [d for d in first["info"]["descriptions"] if d]))
    if not bands:
        raise DatasetError(f"{args.src}: cannot tell the bands of {first['name']}; pass --bands")
    problems = Problems(args.skip_bad)
    scenes, items = [], []
    for scene in found:
        try:
            described = describe(scene, bands, args)
        except BadPatch as e:
            problems.report("train", scene["name"], str(e))
            continue
        height, width = described["grid"]
        rows = range(0, height - args.patch_size + 1, args.stride)
        cols = range(0, width - args.patch_size + 1, args.stride)
        items.extend((len(scenes), r, c) for r in rows for c in cols)
        scenes.append(described)
    dtypes = {s["dtype"] for s in scenes}
    if len(dtypes) > 1:
        raise DatasetError(f"{args.src}: scenes store different dtypes {sorted(dtypes)}")
    opts = Options(tuple(scenes), tuple(bands), args.patch_size, args.resample, args.nodata, args.max_nodata,
                   args.max_cloud, tuple(args.cloud_values) if args.cloud_values else None)
    return Job(
        dataset="scenes", converter="scenes", version=VERSION, splits={"train": items},
        make_record=functools.partial(make_record, opts),
        manifest={
            "source": f"{len(scenes)} Sentinel-2 scene(s) under {os.path.abspath(args.src)}",
            "bands": bands, "dtype": dtypes.pop() if dtypes else "uint16",
            "shape": [args.patch_size, args.patch_size, len(bands)],
            "classes": [], "multi_label": False, "label_kinds": [],
            "patching": {"size": args.patch_size, "stride": args.stride, "max_nodata": args.max_nodata,
                         "max_cloud": args.max_cloud, "cloud_mask": args.cloud_mask, "nodata": args.nodata},
            "resampling": {"method": args.resample, "grid": "finest band of each scene"},
            "scenes": [{"name": s["name"], "grid": s["grid"], "offset_removed": s["offset"],
                        "offset_reason": s["offset_reason"]} for s in scenes],
        },
        options={**{k: v for k, v in dataclasses.asdict(opts).items() if k != "scenes"},
                 "src": os.path.abspath(args.src), "scenes": [[s["name"], s["offset"]] for s in scenes]},
        problems=problems,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = converter_parser(__doc__)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--stride", type=int, default=None, help="default: the patch size (no overlap)")
    parser.add_argument("--bands", help="bands to keep, e.g. B02,B03,B04,B08 (multi-band files: their bands in file order)")
    parser.add_argument("--resample", choices=METHODS, default="bilinear", help="method for the coarser bands")
    parser.add_argument("--nodata", type=float, default=0, help="nodata value besides the files' own (default 0)")
    parser.add_argument("--max-nodata", type=float, default=0.0, help="largest nodata fraction kept (default 0)")
    parser.add_argument("--cloud-mask", default="cloud_mask.tif", help="cloud mask file name in a scene folder")
    parser.add_argument("--cloud-values", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="mask values that count as cloud (default: any non-zero)")
    parser.add_argument("--max-cloud", type=float, default=0.1, help="largest cloudy fraction kept (default 0.1)")
    parser.add_argument("--offset", choices=("auto", "remove", "keep"), default="auto",
                        help="the +1000 DN offset of processing baseline >= 04.00 (auto: removed where a scene carries it)")
    args = parser.parse_args(argv)
    args.stride = args.stride or args.patch_size
    try:
        return run(build_job(args), args)
    finally:
        _whole_band.cache_clear()  # no stale pixels if the files change before the next conversion in-process


if __name__ == "__main__":
    main_guard(main)
