"""A TFDS dataset already prepared locally (array_record) -> sharded ArrayRecord + manifest.

    python -m data_prep.tfds --src ~/tensorflow_datasets --name eurosat/all --out data/eurosat_tfds \\
        [--image-keys sentinel2] [--label-key label] [--bands ...] [--split-fractions 0.6,0.2,0.2]

Reads through ``tfds.data_source`` (no TensorFlow needed). The image is the concatenation of the
``--image-keys`` features: an (H, W, C) tensor gives C bands, an (H, W) tensor one band named after its
key; features of other sizes are resampled onto the largest (``--resample``). Band names come from
``--bands`` (in feature order) or a built-in table of known datasets (``eurosat/all``: file order with
B8A last; ``so2sat``; ``bigearthnet``); when every band is a Sentinel-2 band they are reordered to the
canonical order (B8A after B08). Values and dtype are kept (``--dtype uint16`` stores integral
float features as uint16 and stops on a value that does not fit exactly).
The label is a ``ClassLabel`` (single) or a ``Sequence(ClassLabel)`` (multi-hot) feature. TFDS splits
``train``/``validation``/``test`` become train/val/test; a dataset with only a train split can be cut
by a seeded stratified split (``--split-fractions``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os

import numpy as np

from data_prep.bands import S2_BANDS, canonical_band
from data_prep.convert import Job, Problems, converter_parser, main_guard, run
from data_prep.lists import stratified_split
from data_prep.resample import METHODS, resize
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.records import encode_record
from ssl4eo_jax.data.writer import BadPatch, PatchRecord

VERSION = "1"
SPLITS = {"train": "train", "validation": "val", "test": "test"}
EUROSAT_FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
KNOWN = {  # dataset/config -> (image keys, band names in feature order)
    "eurosat/all": (("sentinel2",), EUROSAT_FILE_BANDS),
    "so2sat/all": (("sentinel2",), ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")),
    "bigearthnet/all": (("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"), ()),
}


@dataclasses.dataclass(frozen=True)
class Options:
    data_dir: str
    name: str
    image_keys: tuple[str, ...]
    order: tuple[int, ...]  # output channel -> concatenated channel
    size: tuple[int, int]
    method: str
    label_key: str | None
    multi: bool
    id_key: str | None
    dtype: str


@functools.lru_cache(maxsize=1)
def _sources(data_dir: str, name: str) -> dict:
    import tensorflow_datasets as tfds

    return tfds.data_source(name, data_dir=data_dir)


def stack_image(example: dict, keys: tuple[str, ...], size: tuple[int, int], method: str) -> np.ndarray:
    planes = []
    for key in keys:
        value = np.asarray(example[key])
        value = value[..., None] if value.ndim == 2 else value
        planes.extend(resize(value[..., c], size, method) for c in range(value.shape[-1]))
    return np.stack(planes, axis=-1)


def make_record(opts: Options, item: tuple[str, int]) -> PatchRecord:
    """Item: (TFDS split, index)."""
    split, index = item
    try:
        example = _sources(opts.data_dir, opts.name)[split][index]
    except Exception as e:
        raise BadPatch(f"{opts.data_dir} {opts.name} {split}[{index}]: cannot decode ({type(e).__name__}: {e})") from e
    image = stack_image(example, opts.image_keys, opts.size, opts.method)[..., list(opts.order)]
    if image.dtype != np.dtype(opts.dtype):
        cast = image.astype(opts.dtype)
        if not np.array_equal(cast, image):
            raise BadPatch(f"{opts.name} {split}[{index}]: values do not fit {opts.dtype} exactly")
        image = cast
    image = np.ascontiguousarray(image)
    label, labels = -1, []
    if opts.label_key:
        value = example[opts.label_key]
        if opts.multi:
            labels = sorted({int(v) for v in np.atleast_1d(value)})
        else:
            label = int(value)
    patch_id = f"{split}_{index:06d}"
    if opts.id_key:
        raw = example[opts.id_key]
        patch_id = os.path.splitext(raw.decode() if isinstance(raw, bytes) else str(raw))[0]
    return PatchRecord(encode_record(image, patch_id, label, labels), patch_id, image)


def _label_feature(features, key: str | None) -> tuple[str | None, bool, list[str]]:
    import tensorflow_datasets as tfds

    if key == "":
        return None, False, []
    key = key or next((k for k in ("label", "labels") if k in features), None)
    if key is None:
        return None, False, []
    feature = features[key]
    if isinstance(feature, tfds.features.ClassLabel):
        return key, False, list(feature.names)
    if isinstance(feature, tfds.features.Sequence) and isinstance(feature.feature, tfds.features.ClassLabel):
        return key, True, list(feature.feature.names)
    raise DatasetError(f"feature {key!r} is a {type(feature).__name__}, not a ClassLabel or Sequence(ClassLabel)")


def build_job(args: argparse.Namespace) -> Job:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(args.name, data_dir=args.src)
        sources = _sources(args.src, args.name)
    except Exception as e:
        raise DatasetError(f"{args.src}: cannot open the prepared TFDS dataset {args.name!r} ({e})") from e
    features = builder.info.features
    known = KNOWN.get(args.name.split(":")[0])
    keys = tuple(args.image_keys.split(",")) if args.image_keys else (known[0] if known else ())
    if not keys or any(k not in features for k in keys):
        raise DatasetError(f"{args.name}: pass --image-keys from its features {sorted(features.keys())}")
    shapes = {k: tuple(features[k].shape) for k in keys}
    names = []
    for key in keys:
        channels = shapes[key][2] if len(shapes[key]) == 3 else 1
        names.extend([key] if len(shapes[key]) == 2 else [f"{key}_{c}" for c in range(channels)])
    if args.bands:
        given = args.bands.split(",")
    elif known and known[1]:
        given = list(known[1])
    else:
        given = names
    if len(given) != len(names):
        raise DatasetError(f"{args.name}: {len(names)} channels in {keys}, but {len(given)} band names")
    try:
        canonical = [canonical_band(b) for b in given]
    except ValueError:
        canonical = None
    if canonical and not args.keep_order:
        order = sorted(range(len(canonical)), key=lambda i: (S2_BANDS + ("VV", "VH")).index(canonical[i]))
        bands = [canonical[i] for i in order]
    else:
        order, bands = list(range(len(given))), canonical or given
    size = max((s[:2] for s in shapes.values()), key=lambda hw: hw[0] * hw[1])
    dtypes = {np.dtype(features[k].np_dtype) for k in keys}
    dtype = args.dtype or str(np.dtype(dtypes.pop() if len(dtypes) == 1 else np.float32))
    label_key, multi, classes = _label_feature(features, args.label_key)
    splits = {SPLITS.get(s, s): [(s, i) for i in range(len(src))] for s, src in sources.items()}
    if args.split_fractions:
        if set(splits) != {"train"} or label_key is None or multi:
            raise DatasetError("--split-fractions needs a dataset with only a train split and a single label")
        labels = [int(sources["train"][i][label_key]) for i in range(len(sources["train"]))]
        fractions = [float(f) for f in args.split_fractions.split(",")]
        parts = stratified_split(labels, fractions, args.split_seed)
        splits = {name: [splits["train"][i] for i in part] for name, part in zip(("train", "val", "test"), parts)}
    id_key = "filename" if "filename" in features else None
    opts = Options(os.path.abspath(args.src), args.name, keys, tuple(order), tuple(size), args.resample,
                   label_key, multi, id_key, dtype)
    return Job(
        dataset=f"tfds:{args.name}", converter="tfds", version=VERSION, splits=splits,
        make_record=functools.partial(make_record, opts),
        manifest={
            "source": f"TFDS {args.name} {builder.info.version} at {os.path.abspath(args.src)}",
            "bands": bands, "dtype": dtype, "shape": [size[0], size[1], len(bands)],
            "classes": classes, "multi_label": multi, "label_kinds": (["multi"] if multi else ["single"]) if label_key else [],
            "split_method": {"kind": "stratified_random", "seed": args.split_seed, "fractions": args.split_fractions}
            if args.split_fractions else {"kind": "tfds_splits"},
        },
        options={**dataclasses.asdict(opts), "split_fractions": args.split_fractions, "split_seed": args.split_seed},
        problems=Problems(args.skip_bad),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = converter_parser(__doc__)
    parser.add_argument("--name", required=True, help="TFDS name with config (and version), e.g. eurosat/all")
    parser.add_argument("--image-keys", help="comma-separated image features (default: known for the dataset)")
    parser.add_argument("--label-key", default=None, help="label feature (default: label or labels; '' for none)")
    parser.add_argument("--bands", help="band names of the image channels, in feature order")
    parser.add_argument("--keep-order", action="store_true", help="keep the feature order of the bands")
    parser.add_argument("--resample", choices=METHODS, default="bilinear", help="for features smaller than the largest")
    parser.add_argument("--dtype", help="store as this dtype (must hold every value exactly)")
    parser.add_argument("--split-fractions", help="cut a train-only dataset, e.g. 0.6,0.2,0.2")
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        return run(build_job(args), args)
    finally:
        _sources.cache_clear()


if __name__ == "__main__":
    main_guard(main)
