"""Transfer between datasets with different band sets: band mapping by band name.

An encoder pre-trained on one dataset (say BigEarthNet's 12 bands) is evaluated on another (EuroSAT's
13, So2Sat's 10). Its first convolution expects its own bands in its own order, so every input is
rearranged by band *name* (``B1``/``B01``/``b1`` compare equal):

* a band of the encoder that the target lacks is **zero-filled in normalised units**, i.e. set to the
  band's mean: the value that carries no information, and exactly what the pre-training's
  ``band_drop`` augmentation shows the encoder (``augment.py`` sets dropped bands to 0 after
  normalisation). (The reference's BigEarthNet->So2Sat transfer pads raw zeros instead, which after
  its normalisation is a strongly negative value; REFERENCE_SETTINGS.md 1.7.)
* a band of the target that the encoder lacks is dropped;
* the present bands are normalised with the **target** dataset's own statistics (manifest
  ``band_stats``) when the encoder uses the ``dataset`` normalisation (our runs), otherwise with the
  encoder's fixed per-band normalisation (e.g. SSL4EO-S12's /10000) looked up by name.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.interop.normalisation import Normalisation, canonical_band


@dataclasses.dataclass(frozen=True)
class BandMap:
    """Where each encoder band comes from in the target data (-1: missing, zero-filled)."""

    encoder_bands: tuple[str, ...]
    data_bands: tuple[str, ...]
    index: tuple[int, ...]

    @property
    def identity(self) -> bool:
        return self.index == tuple(range(len(self.data_bands)))

    @property
    def missing(self) -> list[str]:
        return [b for b, i in zip(self.encoder_bands, self.index) if i < 0]

    @property
    def dropped(self) -> list[str]:
        used = set(self.index)
        return [b for j, b in enumerate(self.data_bands) if j not in used]

    def apply(self, x: jnp.ndarray) -> jnp.ndarray:
        """Normalised data (..., C_data) -> encoder input (..., C_encoder), missing bands 0."""
        if self.identity:
            return x
        index = np.asarray(self.index)
        gathered = jnp.take(x, np.maximum(index, 0), axis=-1)
        return jnp.where(jnp.asarray(index >= 0), gathered, jnp.zeros((), x.dtype))

    def describe(self) -> dict[str, object]:
        return {"encoder_bands": list(self.encoder_bands), "data_bands": list(self.data_bands),
                "index": list(self.index), "zero_filled": self.missing, "dropped": self.dropped}


def band_map(encoder_bands: Sequence[str], data_bands: Sequence[str]) -> BandMap:
    """The mapping by canonical band name; an error when no band is shared."""
    position = {canonical_band(b): j for j, b in enumerate(data_bands)}
    index = tuple(position.get(canonical_band(b), -1) for b in encoder_bands)
    if all(i < 0 for i in index):
        raise ConfigError(f"The encoder's bands {list(encoder_bands)} share no band with the data's {list(data_bands)}.")
    return BandMap(tuple(encoder_bands), tuple(data_bands), index)


def resolve_band_map(encoder_bands: Sequence[str] | None, num_encoder_bands: int, data_bands: Sequence[str],
                     what: str) -> BandMap:
    """``band_map`` when the encoder names its bands; else the identity if the counts agree."""
    if encoder_bands is None:
        if num_encoder_bands != len(data_bands):
            raise ConfigError(
                f"{what} takes {num_encoder_bands} bands but does not say which, and the data has "
                f"{len(data_bands)}: name them with --config.encoder_bands=B01,B02,... to map them by name.")
        logging.warning("%s does not name its bands; assuming the data's order %s.", what, list(data_bands))
        encoder_bands = data_bands
    if len(encoder_bands) != num_encoder_bands:
        raise ConfigError(f"{what} takes {num_encoder_bands} bands, but {len(encoder_bands)} band names were given.")
    mapping = band_map(encoder_bands, data_bands)
    if not mapping.identity:
        logging.info("Band mapping for %s: zero-filled %s, dropped %s.", what, mapping.missing, mapping.dropped)
    return mapping


def data_stats(normalisation: Normalisation, mapping: BandMap, data_mean: np.ndarray, data_std: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (mean, std) in the *data's* band order for ``(x - mean) / std`` before mapping."""
    if normalisation.mean is None:  # the "dataset" preset: the target's own statistics
        return np.asarray(data_mean, np.float32), np.asarray(data_std, np.float32)
    enc_mean, enc_std = normalisation.arrays()
    mean, std = np.zeros(len(mapping.data_bands), np.float32), np.ones(len(mapping.data_bands), np.float32)
    for i, j in enumerate(mapping.index):
        if j >= 0:
            mean[j], std[j] = enc_mean[i], enc_std[i]
    return mean, std
