"""Helpers of the data_prep tests: GeoTIFF fixtures, running a converter, reading a split back."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

REALDATA = os.environ.get(
    "SSL4EO_REALDATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "realdata")
)
needs_realdata = pytest.mark.skipif(
    not os.path.isdir(REALDATA),
    reason=f"real samples not found at {REALDATA} (set SSL4EO_REALDATA to the shared/realdata folder)",
)


def write_tif(path: str, array: np.ndarray, crs: str = "EPSG:32633", pixel: float = 10.0,
              origin: tuple[float, float] = (400000.0, 5000000.0), nodata=None, **profile) -> str:
    """Writes (C, H, W) or (H, W) ``array`` as an uncompressed GeoTIFF in its own dtype."""
    import rasterio
    from affine import Affine

    array = array[None] if array.ndim == 2 else array
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
        dtype=array.dtype, crs=crs, transform=Affine(pixel, 0, origin[0], 0, -pixel, origin[1]), nodata=nodata,
        **profile,
    ) as dst:
        dst.write(array)
    return path


def read_tif(path: str) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def convert(module, *argv: str, workers: int = 1) -> dict:
    """Runs ``module.main`` with the given flags (no progress bars); returns the manifest."""
    return module.main([*map(str, argv), "--no-progress", "--workers", str(workers)])


def read_split(out: str, split: str) -> dict[str, dict]:
    """Every record of a split, by id."""
    from ssl4eo_jax.data import open_split

    ds = open_split(str(out), split)
    return {item["id"]: item for item in (ds[i] for i in range(len(ds)))}


def shard_digests(out: str) -> dict[str, str]:
    """sha256 of every shard file of a converted directory."""
    return {
        name: hashlib.sha256(open(os.path.join(out, name), "rb").read()).hexdigest()
        for name in sorted(os.listdir(out)) if name.endswith(".array_record")
    }
