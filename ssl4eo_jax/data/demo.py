"""The embedded default dataset: synthetic Sentinel-2 L1C patches, written like a real archive.

This is NOT real imagery. It is a deterministic stand-in with the structure that matters for
self-supervised pre-training, so that every layer of ssl4eo-jax runs end to end on a laptop:

* 13 bands in Sentinel-2 order (B01..B12, B8A after B08), uint16 top-of-atmosphere DN
  (reflectance x 10000), as in EuroSAT-MS or SEN12MS;
* 10 land-cover classes with typical L1C spectral signatures (water, forest, cropland, grassland,
  urban, bare soil, wetland, snow/ice, shrubland, burnt area);
* spatially structured scenes: blob-like regions of 1-4 classes, rivers and roads crossing them,
  class-specific textures (field parcels, urban blocks, tree crowns, speckled wetlands), mixed pixels
  at region edges, and the coarser native resolution of the 20 m and 60 m bands;
* per-image illumination (sun-angle gain, haze that falls off with wavelength), occasional thin
  cloud and signal-dependent sensor noise;
* a single label (the dominant class) and a multi-hot label (every class covering >= 10 %) per
  patch, and train/val/test splits.

Variants (``VARIANTS``) stand in for the review's datasets with their band sets and tasks, so that
band mapping between datasets and multi-label metrics run on the demo too: ``demo_ben`` (the 12
BigEarthNet bands, no B10, multi-label), ``demo_so2sat`` (So2Sat's 10 bands) and ``demo_eurosat``
(13 bands like EuroSAT-MS); each draws other patches (its own seed offset). Still NOT real data.

Usage::

    python -m data_prep.demo --out ~/data/demo                   # explicit location (the command line)
    from ssl4eo_jax.data.demo import ensure_demo_dataset        # cached, used when no data dir is given
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from ssl4eo_jax.cache import cache_dir as ssl4eo_cache_dir
from ssl4eo_jax.data.manifest import MANIFEST_NAME, write_manifest
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import PatchRecord, band_stats_entry, write_split

VERSION = "1"
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
# Native ground sampling distance of each band (m): the 20 m and 60 m bands are blockier.
BAND_GSD = (60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 60, 20, 20)
CLASSES = (
    "water", "forest", "cropland", "grassland", "urban",
    "bare_soil", "wetland", "snow_ice", "shrubland", "burnt_area",
)
# Typical top-of-atmosphere (L1C) reflectance x 10000, in BANDS order. Blue bands carry the
# atmospheric path radiance; B09 (water vapour) and B10 (cirrus) are absorption bands.
SIGNATURES = np.array([
    # B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09  B10   B11   B12
    [1350, 1100,  900,  650,  520,  450,  430,  380,  350,  120,   8,  130,   90],  # water
    [1250,  950,  820,  600,  950, 1900, 2300, 2450, 2600,  750,  10, 1450,  700],  # forest
    [1300, 1050, 1050,  780, 1350, 2700, 3200, 3350, 3550,  950,  12, 2100, 1100],  # cropland
    [1320, 1080, 1120,  980, 1400, 2200, 2550, 2650, 2800,  850,  11, 2400, 1450],  # grassland
    [1450, 1320, 1280, 1320, 1450, 1700, 1850, 1900, 1980,  640,  14, 2350, 1950],  # urban
    [1480, 1330, 1480, 1750, 1980, 2180, 2320, 2380, 2520,  800,  15, 3300, 2900],  # bare soil
    [1300, 1000,  920,  720,  900, 1350, 1550, 1600, 1650,  520,   9, 1050,  580],  # wetland
    [5600, 5700, 5600, 5450, 5350, 5250, 5100, 5000, 4900, 2100,  40,  700,  550],  # snow/ice
    [1360, 1150, 1220, 1250, 1560, 1950, 2150, 2230, 2380,  760,  12, 2750, 2050],  # shrubland
    [1300, 1050,  950, 1000, 1100, 1200, 1300, 1350, 1400,  450,  10, 1800, 1600],  # burnt area
], np.float64)
CLOUD = np.array([4200, 4300, 4300, 4350, 4300, 4250, 4200, 4150, 4100, 1600, 350, 3000, 2200], np.float64)
# Additive haze per unit of haze strength: strongest in the blue, nearly absent in the SWIR.
HAZE_PROFILE = np.array([1.0, 0.85, 0.65, 0.45, 0.35, 0.3, 0.25, 0.2, 0.2, 0.1, 0.02, 0.05, 0.03])
WATER, FOREST, CROPLAND, GRASSLAND, URBAN, SOIL, WETLAND, SNOW, SHRUB, BURNT = range(len(CLASSES))
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# name -> (bands, multi_label task, seed offset). Band sets of BigEarthNet (no B10) and So2Sat.
VARIANTS: dict[str, tuple[tuple[str, ...], bool, int]] = {
    "demo": (BANDS, False, 0),
    "demo_ben": (tuple(b for b in BANDS if b != "B10"), True, 1000),
    "demo_so2sat": (("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"), False, 2000),
    "demo_eurosat": (BANDS, False, 3000),
}
DEFAULT_SIZES = {"train": 4000, "val": 1000, "test": 1000}
MULTI_LABEL_MIN_COVER = 0.10


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [-1, 1]-ish: a coarse Gaussian grid upsampled bilinearly."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    coords = np.linspace(0, cells, size)
    rows = np.array([np.interp(coords, np.arange(cells + 1), grid[:, j]) for j in range(cells + 1)]).T
    return np.array([np.interp(coords, np.arange(cells + 1), rows[i]) for i in range(size)])


def _parcels(rng: np.random.Generator, size: int, low: int, high: int) -> np.ndarray:
    """Integer ids of rectangular parcels (field blocks or urban blocks)."""
    def cuts() -> np.ndarray:
        edges = np.cumsum(rng.integers(low, high + 1, size=size))
        return np.searchsorted(edges[edges < size], np.arange(size), side="right")
    rows, cols = cuts(), cuts()
    return rows[:, None] * (size + 1) + cols[None, :]


def _line_mask(rng: np.random.Generator, size: int, width: float) -> np.ndarray:
    """A sinuous band across the patch through a point near its centre (a river or a road)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.uniform(-0.25, 0.25, size=2) * size
    angle = rng.uniform(0, np.pi)
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    wiggle = rng.uniform(0, 4) * np.sin(along / rng.uniform(4, 12) + rng.uniform(0, 2 * np.pi))
    return np.abs(across - wiggle) < width / 2


def _class_map(rng: np.random.Generator, size: int) -> np.ndarray:
    """A land-cover map of 1-4 blob-like regions, sometimes crossed by a river or a road."""
    n = rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15])
    present = rng.choice(len(CLASSES), size=n, replace=False)
    fields = np.stack([_smooth_field(rng, size, int(rng.integers(2, 5))) for _ in range(n)])
    fields += np.linspace(0.6, 0.0, n)[:, None, None] * rng.uniform(0.5, 1.5)
    cmap = present[np.argmax(fields, axis=0)]
    if rng.random() < 0.2:
        cmap[_line_mask(rng, size, rng.uniform(2, 5))] = WATER
    if rng.random() < 0.15:
        cmap[_line_mask(rng, size, rng.uniform(1.5, 3))] = URBAN
    return cmap


def _texture(rng: np.random.Generator, cls: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel (partner signature, mixing fraction, brightness) that give a class its look."""
    noise = lambda cells: _smooth_field(rng, size, cells)  # noqa: E731
    fine = rng.standard_normal((size, size))
    frac = np.zeros((size, size))
    bright = np.ones((size, size))
    partner = SIGNATURES[SOIL]
    if cls == WATER:
        frac = np.clip(0.08 + 0.05 * noise(3), 0, 0.2)  # turbidity
        bright = 1 + 0.01 * fine
    elif cls == FOREST:
        partner = SIGNATURES[SHRUB]
        frac = np.clip(0.1 + 0.1 * noise(4), 0, 0.4)
        bright = 1 + 0.12 * fine - 0.05 * np.abs(noise(8))  # crowns and shadows
    elif cls == CROPLAND:
        ids = _parcels(rng, size, 6, 14)
        vigour = rng.uniform(0, 0.7, size=ids.max() + 1)  # some parcels bare or harvested
        frac = vigour[ids]
        rows = np.arange(size)[:, None] * np.ones((1, size))
        bright = 1 + 0.03 * np.sin(rows * rng.uniform(1.5, 2.5)) + 0.02 * fine
    elif cls == GRASSLAND:
        frac = np.clip(0.1 + 0.1 * noise(3), 0, 0.35)
        bright = 1 + 0.05 * noise(5) + 0.02 * fine
    elif cls == URBAN:
        ids = _parcels(rng, size, 2, 5)
        kind = rng.choice(4, size=ids.max() + 1, p=[0.4, 0.2, 0.25, 0.15])[ids]
        bright = np.choose(kind, [1.25, 0.6, 1.0, 0.85]) + 0.05 * fine  # roofs, shadows, green, roads
        partner = SIGNATURES[GRASSLAND]
        frac = np.where(kind == 2, 0.6, 0.0)
    elif cls == SOIL:
        partner = SIGNATURES[GRASSLAND]
        frac = np.clip(0.05 * noise(3), 0, 0.2)
        bright = 1 + 0.08 * noise(4) + 0.02 * fine  # moisture
    elif cls == WETLAND:
        partner = SIGNATURES[WATER]
        frac = np.clip(0.25 + 0.3 * noise(6) + 0.1 * fine, 0, 0.7)  # open water speckles
    elif cls == SNOW:
        bright = 1 - 0.25 * np.clip(noise(3), 0, None) + 0.01 * fine  # terrain shadows
        partner = SIGNATURES[BURNT]
        frac = np.clip(0.1 * noise(5), 0, 0.25)  # rocks showing through
    elif cls == SHRUB:
        partner = SIGNATURES[GRASSLAND]
        frac = np.clip(0.3 + 0.4 * noise(7) + 0.1 * fine, 0, 1)
    elif cls == BURNT:
        frac = np.clip(0.2 + 0.3 * noise(4), 0, 0.6)
        bright = 1 + 0.06 * fine
    return partner, frac, bright


def _native_resolution(image: np.ndarray) -> np.ndarray:
    """Gives the 20 m and 60 m bands their coarser native pixels on the 10 m grid."""
    size = image.shape[0]
    for band, gsd in enumerate(BAND_GSD):
        factor = gsd // 10
        if factor == 1 or size % factor:
            continue
        blocks = image[:, :, band].reshape(size // factor, factor, size // factor, factor).mean(axis=(1, 3))
        image[:, :, band] = np.repeat(np.repeat(blocks, factor, axis=0), factor, axis=1)
    return image


def _box_blur(image: np.ndarray) -> np.ndarray:
    """A 3x3 box blur: the sensor's point spread mixes pixels at region edges."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    size = image.shape[0]
    return sum(padded[i : i + size, j : j + size] for i in range(3) for j in range(3)) / 9.0


def make_patch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic L1C patch (size, size, 13) uint16 and its land-cover map (size, size)."""
    cmap = _class_map(rng, size)
    image = np.zeros((size, size, len(BANDS)))
    for cls in np.unique(cmap):
        signature = SIGNATURES[cls] * (1 + 0.05 * rng.standard_normal(len(BANDS)))  # per-region variety
        partner, frac, bright = _texture(rng, int(cls), size)
        pixels = ((1 - frac)[..., None] * signature + frac[..., None] * partner) * bright[..., None]
        image[cmap == cls] = pixels[cmap == cls]
    image = _box_blur(image)
    if rng.random() < 0.08:  # thin cloud
        alpha = np.clip(rng.uniform(0.1, 0.35) * (0.5 + 0.5 * _smooth_field(rng, size, 2)), 0, 0.4)
        image = (1 - alpha[..., None]) * image + alpha[..., None] * CLOUD
    image = _native_resolution(image)
    image = image * rng.uniform(0.85, 1.15) + rng.uniform(0, 250) * HAZE_PROFILE  # sun angle, haze
    image += rng.standard_normal(image.shape) * (12 + 0.01 * image)  # sensor noise
    return np.clip(np.rint(image), 1, 65535).astype(np.uint16), cmap


def labels_from_map(cmap: np.ndarray) -> tuple[int, list[int]]:
    """Single label (dominant class) and multi-hot class list (cover >= 10 %) of a class map."""
    cover = np.bincount(cmap.ravel(), minlength=len(CLASSES)) / cmap.size
    return int(np.argmax(cover)), [int(c) for c in np.flatnonzero(cover >= MULTI_LABEL_MIN_COVER)]


def demo_record(split: str, index: int, *, seed: int, size: int, bands: tuple[str, ...] = BANDS) -> PatchRecord:
    """The record of patch ``index`` of ``split`` (only ``bands``); a pure function of its arguments."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    image, cmap = make_patch(rng, size)
    if bands != BANDS:
        image = np.ascontiguousarray(image[:, :, [BANDS.index(b) for b in bands]])
    label, labels = labels_from_map(cmap)
    patch_id = f"demo_{split}_{index:06d}"
    return PatchRecord(encode_record(image, patch_id, label, labels), patch_id, image)


def _record_fn(split: str, seed: int, size: int, bands: tuple[str, ...]):
    return functools.partial(_demo_record_by_index, split, seed, size, bands)


def _demo_record_by_index(split: str, seed: int, size: int, bands: tuple[str, ...], index: int) -> PatchRecord:
    return demo_record(split, index, seed=seed, size=size, bands=bands)


def variant(name: str) -> tuple[tuple[str, ...], bool, int]:
    """(bands, multi_label, seed offset) of a demo variant; a clear error for unknown names."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown demo dataset {name!r}; choose one of {', '.join(VARIANTS)}.")
    return VARIANTS[name]


def generate(
    out: str, sizes: dict[str, int] | None = None, size: int = 48, seed: int = 0,
    workers: int = 1, records_per_shard: int = 1000, progress: bool = True, name: str = "demo",
) -> str:
    """Writes the demo dataset (or the variant ``name``) into ``out`` (resumable); returns ``out``."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    bands, multi_label, offset = variant(name)
    seed += offset
    if "train" not in sizes:
        raise ValueError("The demo dataset needs a train split (its band statistics come from it).")
    splits, stats = {}, None
    for split, count in sizes.items():
        summary = write_split(
            out, split, count, _record_fn(split, seed, size, bands), records_per_shard=records_per_shard,
            workers=workers, progress=progress,
        )
        splits[split] = summary.manifest_entry()
        if split == "train":
            stats = summary.stats
    write_manifest(out, {
        "dataset": name,
        "source": f"synthetic Sentinel-2 L1C stand-in (data_prep.demo, seed {seed}); not real imagery",
        "converter": "data_prep.demo",
        "converter_version": VERSION,
        "bands": list(bands),
        "dtype": "uint16",
        "shape": [size, size, len(bands)],
        "band_stats": band_stats_entry(stats, "train"),
        "classes": list(CLASSES),
        "multi_label": multi_label,
        "label_kinds": ["single", "multi"],
        "multi_label_min_cover": MULTI_LABEL_MIN_COVER,
        "splits": splits,
        "gsd_m": 10,
    })
    return out


def ensure_demo_dataset(
    cache_dir: str | None = None, sizes: dict[str, int] | None = None, size: int = 48, seed: int = 0,
    workers: int = 1, progress: bool = True, name: str = "demo",
) -> str:
    """Returns the directory of the cached demo dataset (or variant), generating it on first use."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    variant(name)
    tag = "-".join(f"{k}{v}" for k, v in sizes.items())
    out = os.path.join(cache_dir or ssl4eo_cache_dir(), f"{name}-v{VERSION}-{size}px-{tag}-seed{seed}")
    if not _cache_intact(out):
        generate(out, sizes, size=size, seed=seed, workers=workers, progress=progress, name=name)
    return out


def _cache_intact(out: str) -> bool:
    """Whether the cached demo data in ``out`` is complete and passes the cheap shard checks. A
    damaged cache (a deleted or truncated shard) is regenerated, rewriting only what is damaged; so is
    one written before the manifest recorded per-shard checksums (to add them)."""
    if not os.path.exists(os.path.join(out, MANIFEST_NAME)):
        return False
    from ssl4eo_jax.data.integrity import check_dataset
    from ssl4eo_jax.data.manifest import DatasetError, load_manifest

    try:
        manifest = load_manifest(out)
        if any(manifest.shard_info(split) is None for split in manifest.splits):
            return False
        check_dataset(manifest)
    except DatasetError as e:
        logging.warning("The cached demo data is damaged (%s); regenerating what is missing or damaged.", e)
        return False
    return True
