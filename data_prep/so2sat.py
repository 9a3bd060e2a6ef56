"""So2Sat LCZ42 HDF5 (training/validation/testing.h5) -> sharded ArrayRecord + manifest.

    python -m data_prep.so2sat --src So2Sat_LCZ42 --out data/so2sat [--variant culture_10] [--s1] [--dtype float32]

``--src`` holds ``training.h5``, ``validation.h5`` and ``testing.h5`` (version 2), or pass ``--variant``
for the version-3 folders ``culture_10/``, ``random/``, ``block/`` (training and testing only). Each
file has ``sen2`` (N, 32, 32, 10: B02..B08, B8A, B11, B12, reflectance / 10000), ``sen1`` (N, 32, 32, 8)
and ``label`` (N, 17, one-hot). Patches are read in blocks of ``BLOCK`` rows, never the whole file.

The records keep the archive's float64 values bit-exact by default. ``--dtype float32`` halves the
size: the narrowing changes each value by at most 2**-24 of itself (6e-8), far below the 1e-4 step of
the 12-bit-DN / 10000 reflectances and below the noise of the SAR channels (TFDS ships So2Sat as
float32, and the SSL4EO review casts to float32 when loading).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os

import numpy as np

from data_prep.convert import Job, Problems, converter_parser, main_guard, run
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import BadPatch, PatchRecord

VERSION = "1"
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
# sen1 channels (So2Sat README): VH and VV complex parts, Lee-filtered intensities and covariance.
S1_CHANNELS = ("VH_real", "VH_imag", "VV_real", "VV_imag", "VH_lee", "VV_lee", "VHVV_lee_real", "VHVV_lee_imag")
CLASSES = (
    "Compact high rise", "Compact mid rise", "Compact low rise", "Open high rise", "Open mid rise",
    "Open low rise", "Lightweight low rise", "Large low rise", "Sparsely built", "Heavy industry",
    "Dense trees", "Scattered trees", "Bush, scrub", "Low plants", "Bare rock or paved",
    "Bare soil or sand", "Water",
)
FILES = {"train": "training.h5", "val": "validation.h5", "test": "testing.h5"}
VARIANTS = ("v2", "culture_10", "random", "block")
SIZE = 32
BLOCK = 256


@dataclasses.dataclass(frozen=True)
class Options:
    folder: str
    s1: bool
    dtype: str | None  # None: as in the file


_FILES: dict = {}  # path -> open h5py.File, one per process


def _open(path: str):
    import h5py

    if path not in _FILES:
        _FILES[path] = h5py.File(path, "r")
    return _FILES[path]


def close_files() -> None:
    """Closes the cached HDF5 handles and drops the cached blocks (end of a conversion)."""
    _block.cache_clear()
    while _FILES:
        _FILES.popitem()[1].close()


@functools.lru_cache(maxsize=2)
def _block(path: str, start: int, s1: bool) -> dict[str, np.ndarray]:
    """Rows ``start .. start + BLOCK - 1`` of sen2, label (and sen1) of one file."""
    f = _open(path)
    keys = ("sen2", "label") + (("sen1",) if s1 else ())
    return {key: f[key][start : start + BLOCK] for key in keys}


def make_record(opts: Options, item: tuple[str, int]) -> PatchRecord:
    """Item: (file name, row)."""
    name, row = item
    path = os.path.join(opts.folder, name)
    try:
        block = _block(path, row - row % BLOCK, opts.s1)
    except (OSError, KeyError) as e:
        raise BadPatch(f"{path}: cannot read rows around {row} ({type(e).__name__}: {e})") from e
    offset = row % BLOCK
    one_hot = block["label"][offset]
    if not (np.count_nonzero(one_hot) == 1 and one_hot.max() == 1):
        raise BadPatch(f"{path}: label[{row}] is not one-hot ({one_hot.tolist()})")
    image = block["sen2"][offset]
    if opts.s1:
        image = np.concatenate([image, block["sen1"][offset]], axis=-1)
    if opts.dtype is not None:
        image = image.astype(opts.dtype)
    patch_id = f"{os.path.splitext(name)[0]}_{row:06d}"
    return PatchRecord(encode_record(image, patch_id, int(np.argmax(one_hot))), patch_id, image)


def check_file(path: str, s1: bool) -> tuple[int, str]:
    """Number of patches and the image dtype of one file; wrong keys or shapes are errors."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        expected = {"sen2": (SIZE, SIZE, len(S2_BANDS)), "label": (len(CLASSES),)}
        if s1:
            expected["sen1"] = (SIZE, SIZE, len(S1_CHANNELS))
        for key, tail in expected.items():
            if key not in f:
                raise DatasetError(f"{path}: no dataset {key!r} (it has {sorted(f.keys())})")
            if tuple(f[key].shape[1:]) != tail:
                raise DatasetError(f"{path}: {key} has shape {f[key].shape}, expected (N, {', '.join(map(str, tail))})")
        counts = {key: f[key].shape[0] for key in expected}
        if len(set(counts.values())) != 1:
            raise DatasetError(f"{path}: datasets hold different numbers of patches {counts}")
        dtypes = {f[key].dtype for key in expected if key != "label"}
        if len(dtypes) != 1 or not all(np.issubdtype(d, np.floating) for d in dtypes):
            raise DatasetError(f"{path}: image datasets have dtypes {sorted(map(str, dtypes))}, expected one float dtype")
        return counts["sen2"], str(dtypes.pop())


def build_job(args: argparse.Namespace) -> Job:
    folder = args.src if args.variant == "v2" else os.path.join(args.src, args.variant)
    present = {split: name for split, name in FILES.items() if os.path.isfile(os.path.join(folder, name))}
    if "train" not in present:
        raise DatasetError(f"{folder}: no {FILES['train']} (expected So2Sat LCZ42 {', '.join(FILES.values())})")
    splits, dtypes = {}, set()
    for split, name in present.items():
        count, dtype = check_file(os.path.join(folder, name), args.s1)
        splits[split] = [(name, row) for row in range(count)]
        dtypes.add(dtype)
    if len(dtypes) != 1:
        raise DatasetError(f"{folder}: the files store different dtypes {sorted(dtypes)}")
    archive_dtype = dtypes.pop()
    dtype = args.dtype or archive_dtype
    bands = list(S2_BANDS) + (list(S1_CHANNELS) if args.s1 else [])
    opts = Options(os.path.abspath(folder), args.s1, args.dtype)
    return Job(
        dataset="so2sat", converter="so2sat", version=VERSION, splits=splits,
        make_record=functools.partial(make_record, opts),
        manifest={
            "source": f"So2Sat LCZ42 ({args.variant}) at {os.path.abspath(folder)}: sen2{' + sen1' if args.s1 else ''}",
            "variant": args.variant, "files": present,
            "bands": bands, "dtype": dtype, "shape": [SIZE, SIZE, len(bands)],
            "value_scale": "sen2 is decimal reflectance (DN / 10000)",
            "classes": list(CLASSES), "multi_label": False, "label_kinds": ["single"], "gsd_m": 10,
            "archive_dtype": archive_dtype,
        },
        options={**dataclasses.asdict(opts), "variant": args.variant},
        problems=Problems(args.skip_bad),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = converter_parser(__doc__)
    parser.add_argument("--variant", choices=VARIANTS, default="v2",
                        help="v2: the h5 files are in --src; else the version-3 subfolder of --src")
    parser.add_argument("--s1", action="store_true", help="append the 8 sen1 channels after the 10 sen2 bands")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="store in this dtype (default: as in the file, float64 in the real archive)")
    args = parser.parse_args(argv)
    try:
        return run(build_job(args), args)
    finally:
        close_files()


if __name__ == "__main__":
    main_guard(main)
