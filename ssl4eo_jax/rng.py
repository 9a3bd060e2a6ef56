"""Named random streams: one key per purpose, derived from the run's seed and the purpose's name,
so that adding a stream never changes another (``fold_in`` of a CRC-32 of the name)."""

from __future__ import annotations

import zlib

import jax


def stream(seed: int, name: str) -> jax.Array:
    """The key of stream ``name`` (e.g. ``"mocov2/shuffle_bn"``) for ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
