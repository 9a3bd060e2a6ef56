"""Named random streams: one key per purpose, derived from the run's seed and the purpose's name.

Every random draw of a run comes from a stream in ``STREAMS``, folded from ``jax.random.key(seed)``
with the CRC-32 of the stream's name, so adding a stream (or an augmentation op) never changes
another's numbers, and two purposes never share a key by accident. A stream that varies per step
folds the step in afterwards (``jax.random.fold_in(stream(seed, "augment"), step)``).
"""

from __future__ import annotations

import zlib

import jax

STREAMS: dict[str, str] = {
    "init": "the method's networks: heads, predictors, prototypes (the encoder has its own stream)",
    "init/encoder": "the encoder's initial weights, derived from the init key: one encoder per seed for "
                    "every method and for evaluate's checkpoint=random",
    "augment": "pre-training views; step s folds in s, then every example its global index",
    "method": "a method's own draws inside its loss; step s folds in s",
    "mocov2/shuffle_bn": "MoCo-v2's shuffle-BN permutation of the key batch, derived from the method key",
    "mocov2/queue": "MoCo-v2's initial queue of random unit vectors, derived from the init key",
    "finetune/head": "the linear head of fine-tuning and of the reference linear probe",
    "finetune/augment": "fine-tuning views; step s folds in s",
    "linear_probe": "the minibatch order of the frozen-feature linear probe",
}


def name_id(name: str) -> int:
    """A stable 31-bit id of ``name`` (its CRC-32): what ``fold_in`` takes for a named draw."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _check(name: str) -> None:
    if name not in STREAMS:
        raise ValueError(f"Unknown random stream {name!r}; the streams are {', '.join(STREAMS)} (ssl4eo_jax/rng.py).")


def derive(key: jax.Array, name: str) -> jax.Array:
    """The key of stream ``name`` under ``key`` (e.g. ``derive(init_key, "init/encoder")``)."""
    _check(name)
    return jax.random.fold_in(key, name_id(name))


def stream(seed: int, name: str) -> jax.Array:
    """The key of stream ``name`` (e.g. ``"augment"``) for ``seed``."""
    return derive(jax.random.key(int(seed)), name)
