"""Reading GeoTIFF bands with rasterio, every failure turned into a ``BadPatch`` naming the file."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ssl4eo_jax.data.writer import BadPatch

# GDAL otherwise lists the whole folder on every open (slow in EuroSAT's 3000-file class folders).
os.environ.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")


def read_raster(
    path: str,
    *,
    shape: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    dtypes: Sequence[str] | None = None,
    count: int | None = None,
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """All bands of ``path`` as (C, H, W), or the (row, col, height, width) ``window`` of them.

    ``shape`` is the expected (H, W) of the whole raster (or a list of accepted shapes), ``dtypes``
    the accepted dtypes, ``count`` the expected number of bands; a mismatch, a missing file or a
    file GDAL cannot read raises ``BadPatch`` with the path and the problem.
    """
    import rasterio
    from rasterio.windows import Window

    if not os.path.isfile(path):
        raise BadPatch(f"{path}: file missing")
    try:
        with rasterio.open(path) as src:
            found = (src.height, src.width)
            accepted = [tuple(shape)] if shape and isinstance(shape[0], int) else [tuple(s) for s in shape or ()]
            if accepted and found not in accepted:
                want = " or ".join(f"{h}x{w}" for h, w in accepted)
                raise BadPatch(f"{path}: raster is {found[0]}x{found[1]} px, expected {want}")
            if count is not None and src.count != count:
                raise BadPatch(f"{path}: has {src.count} bands, expected {count}")
            if dtypes is not None and src.dtypes[0] not in dtypes:
                raise BadPatch(f"{path}: dtype {src.dtypes[0]}, expected {' or '.join(dtypes)}")
            win = None if window is None else Window(window[1], window[0], window[3], window[2])
            return src.read(window=win)
    except BadPatch:
        raise
    except Exception as e:  # rasterio/GDAL errors of corrupt or truncated files
        raise BadPatch(f"{path}: cannot read the GeoTIFF ({type(e).__name__}: {e})") from e


def raster_info(path: str) -> dict:
    """Height, width, band count, dtype, nodata, band descriptions and tags of ``path``."""
    import rasterio

    if not os.path.isfile(path):
        raise BadPatch(f"{path}: file missing")
    try:
        with rasterio.open(path) as src:
            return {
                "height": src.height, "width": src.width, "count": src.count, "dtype": src.dtypes[0],
                "nodata": src.nodata, "descriptions": list(src.descriptions), "tags": src.tags(),
                "bounds": tuple(src.bounds),
            }
    except Exception as e:
        raise BadPatch(f"{path}: cannot read the GeoTIFF ({type(e).__name__}: {e})") from e
