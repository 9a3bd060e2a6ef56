"""Temporary datasets for the benchmarks: our ArrayRecord shards, and the same patches as
per-band GeoTIFFs at native Sentinel-2 resolutions (the layout the reference code reads)."""

from __future__ import annotations

import functools
import os

import numpy as np

from ssl4eo_jax.data.manifest import write_manifest
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import PatchRecord, band_stats_entry, write_split

BANDS13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
GSD = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B8A": 20,
       "B09": 60, "B10": 60, "B11": 20, "B12": 20}


def bench_patch(index: int, size: int, bands: int) -> np.ndarray:
    """A deterministic uint16 patch with Sentinel-2-like value ranges."""
    rng = np.random.default_rng(index)
    base = rng.integers(300, 4000, size=(1, 1, bands))
    return (base + rng.integers(0, 400, size=(size, size, bands))).astype(np.uint16)


def _record(size: int, bands: int, index: int) -> PatchRecord:
    image = bench_patch(index, size, bands)
    return PatchRecord(encode_record(image, f"bench_{index:06d}", label=index % 10), f"bench_{index:06d}", image)


def write_shards(out: str, count: int, size: int, bands: int = 13, workers: int = 1) -> str:
    """``count`` patches of ``size`` px as a one-split ArrayRecord dataset (reused if present)."""
    if os.path.exists(os.path.join(out, "manifest.json")):
        return out
    summary = write_split(out, "train", count, functools.partial(_record, size, bands), records_per_shard=512,
                          workers=workers, progress=False)
    write_manifest(out, {
        "dataset": "bench", "source": "ssl4eo_jax.bench synthetic patches", "converter": "ssl4eo_jax.bench.fixtures",
        "converter_version": "1", "bands": list(BANDS13[:bands]), "dtype": "uint16", "shape": [size, size, bands],
        "band_stats": band_stats_entry(summary.stats), "classes": [f"c{i}" for i in range(10)],
        "multi_label": False, "label_kinds": ["single"], "splits": {"train": summary.manifest_entry()},
    })
    return out


def write_band_tifs(out: str, count: int, size: int = 120) -> str:
    """BigEarthNet-style folders: one GeoTIFF per band at its native resolution (10/20/60 m)."""
    import rasterio
    from rasterio.transform import from_origin

    marker = os.path.join(out, ".complete")
    if os.path.exists(marker):
        return out
    for i in range(count):
        patch = bench_patch(i, size, 13)
        folder = os.path.join(out, f"patch_{i:06d}")
        os.makedirs(folder, exist_ok=True)
        for b, band in enumerate(BANDS13):
            factor = GSD[band] // 10
            data = patch[::factor, ::factor, b]
            with rasterio.open(os.path.join(folder, f"patch_{i:06d}_{band}.tif"), "w", driver="GTiff",
                               height=data.shape[0], width=data.shape[1], count=1, dtype="uint16",
                               crs="EPSG:32633", transform=from_origin(500000, 5000000, GSD[band], GSD[band])) as dst:
                dst.write(data, 1)
    open(marker, "w").close()
    return out
