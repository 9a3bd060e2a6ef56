"""Canonical band names (``B01..B12``, ``B8A``; ``VV``, ``VH``) and the Sentinel-2 band order.

Archives spell bands ``B1``, ``B01``, ``b8a`` or ``S2_B02``; every converter writes the canonical
spelling into its manifest, in the order of ``S2_BANDS`` (SAFE order: B8A after B08), S1 after S2.
"""

from __future__ import annotations

import re
from typing import Iterable

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
# Native ground sampling distance (m) of each Sentinel-2 band.
S2_GSD = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
    "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}
S1_BANDS = ("VV", "VH")
_S2_NAME = re.compile(r"^(?:S2_)?B0?(\d{1,2}|8A)$", re.IGNORECASE)


def canonical_band(name: str) -> str:
    """``B1`` -> ``B01``, ``b8a`` -> ``B8A``, ``vv`` -> ``VV``; raises ValueError for anything else."""
    match = _S2_NAME.match(name.strip())
    if match:
        number = match.group(1).upper()
        band = "B8A" if number == "8A" else f"B{int(number):02d}"
        if band in S2_GSD:
            return band
    if name.strip().upper() in S1_BANDS:
        return name.strip().upper()
    raise ValueError(f"{name!r} is not a Sentinel-2 band (B01..B12, B8A) or a Sentinel-1 band (VV, VH)")


def s2_sorted(bands: Iterable[str]) -> list[str]:
    """Canonical Sentinel-2 names in ``S2_BANDS`` order."""
    return sorted((canonical_band(b) for b in bands), key=S2_BANDS.index)
