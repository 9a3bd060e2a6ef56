"""The on-disk record of one patch: a small JSON header followed by the raw image bytes.

Layout of one ArrayRecord entry (format version 1)::

    b"S4R1" | uint32 little-endian header length | UTF-8 JSON header | image bytes

The header holds the patch ``id``, its single ``label`` (class index, or -1 when the dataset has no
single label) and its ``labels`` (the class indices of a multi-hot label; empty when absent).
The image is stored exactly as in the archive, little-endian, in the dtype and shape that the
dataset's ``manifest.json`` gives (HWC for one date, THWC when a record holds several dates), so
decoding is a zero-copy ``np.frombuffer``.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Sequence

import numpy as np

MAGIC = b"S4R1"
_HEADER = struct.Struct("<4sI")


def encode_record(
    image: np.ndarray,
    patch_id: str,
    label: int = -1,
    labels: Sequence[int] = (),
    extra: dict[str, Any] | None = None,
) -> bytes:
    """Serialises one patch. ``image`` keeps its dtype; it is written little-endian, C order."""
    header: dict[str, Any] = {"id": str(patch_id), "label": int(label), "labels": [int(c) for c in labels]}
    if extra:
        header.update(extra)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    array = np.ascontiguousarray(image)
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return _HEADER.pack(MAGIC, len(head)) + head + array.tobytes()


def decode_header(raw: bytes) -> tuple[dict[str, Any], int]:
    """Returns the JSON header and the byte offset at which the image starts."""
    magic, length = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ValueError(f"Not an ssl4eo-jax record (magic {magic!r}, expected {MAGIC!r}).")
    start = _HEADER.size
    return json.loads(raw[start : start + length]), start + length


def decode_record(raw: bytes, dtype: np.dtype, shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """Decodes one record into numpy arrays: image, label (int32), multi_hot (float32 [K]), id."""
    header, offset = decode_header(raw)
    image = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), offset=offset)
    expected = int(np.prod(shape))
    if image.size != expected:
        raise ValueError(
            f"Record {header.get('id')!r} holds {image.size} values, the manifest's shape "
            f"{tuple(shape)} needs {expected}."
        )
    multi_hot = np.zeros((num_classes,), np.float32)
    if header["labels"]:
        multi_hot[header["labels"]] = 1.0
    return {
        "image": image.reshape(shape),
        "label": np.int32(header["label"]),
        "multi_hot": multi_hot,
        "id": header["id"],
    }
