"""The input normalisation that a set of weights expects: ``x_model = (x - mean) / std`` per band.

``x`` is in the units the dataset stores (uint16 top-of-atmosphere DN for Sentinel-2 L1C, as
in our converted datasets and the SSL4EO-S12 archive). Presets:

* ``ssl4eo_s12``: divide by 10000 (mean 0, std 10000), for the SSL4EO-S12 weights and torchgeo's
  ``SENTINEL2_*_{MOCO,DINO,DECUR}`` weights (torchgeo ``_ssl4eo_s12_transforms_s2_10k``).
* ``ssl4eo_s12_stats``: torchgeo's 13-band SSL4EO-S12 statistics (``_ssl4eo_s12_transforms_s2_stats``).
* ``ssl4eo_s1``: torchgeo's Sentinel-1 (VV, VH) statistics for the SSL4EO-S12 SAR weights.
* ``none``: the identity (mean 0, std 1), for weights trained on already-scaled inputs.
* ``dataset``: the evaluation dataset's own per-band statistics (``manifest.json`` ``band_stats``),
  as our pre-training and the SSL4EO review's reference code normalise.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import numpy as np

from ssl4eo_jax.errors import ConfigError

FORMULA = "(x - mean) / std"

# Band orders of the SSL4EO-S12 weights (torchgeo ``meta['bands']``), keyed by input channels.
S2_L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S2_L2A_BANDS = tuple(b for b in S2_L1C_BANDS if b != "B10")
SSL4EO_S12_BANDS = {13: S2_L1C_BANDS, 12: S2_L2A_BANDS, 3: ("B04", "B03", "B02"), 2: ("VV", "VH")}

# torchgeo/models/resnet.py: _mean_s2/_std_s2 (13 bands, S2_L1C_BANDS order) and _mean_s1/_std_s1.
_S2_MEAN = (1612.9, 1397.6, 1322.3, 1373.1, 1561.0, 2108.4, 2390.7, 2318.7, 2581.0, 837.7, 22.0, 2195.2, 1537.4)
_S2_STD = (791.0, 854.3, 878.7, 1144.9, 1127.5, 1164.2, 1276.0, 1249.5, 1345.9, 577.5, 47.5, 1340.0, 1142.9)
_S1_MEAN, _S1_STD = (-12.59, -20.26), (5.26, 5.91)

# name -> (mean, std, source); a 1-tuple applies to every band.
PRESETS: dict[str, tuple[tuple[float, ...] | None, tuple[float, ...] | None, str]] = {
    "ssl4eo_s12": ((0.0,), (10000.0,), "divide by 10000: SSL4EO-S12 / torchgeo SENTINEL2 weights "
                   "(torchgeo _ssl4eo_s12_transforms_s2_10k)"),
    "ssl4eo_s12_stats": (_S2_MEAN, _S2_STD, "torchgeo _ssl4eo_s12_transforms_s2_stats (13 bands)"),
    "ssl4eo_s1": (_S1_MEAN, _S1_STD, "torchgeo _ssl4eo_s12_transforms_s1 (VV, VH)"),
    "none": ((0.0,), (1.0,), "identity: inputs used as stored"),
    "dataset": (None, None, "the evaluation dataset's per-band statistics (manifest.json band_stats)"),
}


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """Per-band ``(x - mean) / std``; ``mean``/``std`` None means the dataset's own statistics."""

    preset: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str

    def arrays(self, dataset_mean: Sequence[float] | None = None, dataset_std: Sequence[float] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 arrays; the dataset's statistics for the ``dataset`` preset."""
        if self.mean is None or self.std is None:
            if dataset_mean is None or dataset_std is None:
                raise ConfigError(f"Normalisation {self.preset!r} needs the dataset's band statistics.")
            return np.asarray(dataset_mean, np.float32), np.asarray(dataset_std, np.float32)
        return np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "formula": FORMULA, "mean": _list(self.mean), "std": _list(self.std),
                "source": self.source}


def _list(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def preset(name: str, num_bands: int) -> Normalisation:
    """The named preset for ``num_bands`` input bands."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown normalisation {name!r}; choose one of {', '.join(sorted(PRESETS))}, "
                          "or give {'mean': [...], 'std': [...]}.")
    mean, std, source = PRESETS[name]
    if mean is not None and std is not None and len(mean) == 1:
        mean, std = mean * num_bands, std * num_bands
    if mean is not None and len(mean) != num_bands:
        raise ConfigError(f"Normalisation {name!r} is defined for {len(mean)} bands; these weights take {num_bands}.")
    return Normalisation(name, mean, std, source)


def from_spec(spec: str | dict[str, Any] | Normalisation, num_bands: int) -> Normalisation:
    """A preset name, a ``{"mean", "std"}`` dict (e.g. an export sidecar's), or a Normalisation."""
    if isinstance(spec, Normalisation):
        return spec
    if isinstance(spec, str):
        return preset(spec, num_bands)
    if spec.get("mean") is None:
        return preset(spec.get("preset", "dataset"), num_bands)
    mean, std = tuple(float(v) for v in spec["mean"]), tuple(float(v) for v in spec["std"])
    if len(mean) != num_bands or len(std) != num_bands:
        raise ConfigError(f"Normalisation has {len(mean)} means and {len(std)} stds; "
                          f"the weights take {num_bands} bands.")
    return Normalisation(str(spec.get("preset", "custom")), mean, std, str(spec.get("source", "given")))


def canonical_band(name: str) -> str:
    """``B01``/``B1``/``b1`` -> ``B1``, ``B8a`` -> ``B8A``: band names compared across conventions."""
    return re.sub(r"^B0(\d)", r"B\1", name.strip().upper())
