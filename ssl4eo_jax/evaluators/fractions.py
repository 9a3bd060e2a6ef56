"""Label fractions: seeded subsets of a training split (the review's 100/50/10/1/0.1 % experiments).

``label_subset`` draws ``max(1, round(fraction * N))`` patches:

* without replacement (default), **stratified** for single-label data: every class gets
  ``floor(fraction * n_c)`` patches, and the patches still missing go to the classes with the largest
  remainders (ties broken by the seeded generator), so each class has ``fraction * n_c`` patches
  up to one and the total is exact;
* for multi-label data, plain seeded sampling without replacement (iterative stratification over
  label sets is not used: at these fractions of BigEarthNet every class keeps its share in
  expectation, and plain sampling is what the reference does, minus the duplicates);
* ``with_replacement=True`` reproduces the reference's ``random_subset``:
  ``rng.choice(range(N), int(frac * N))``, i.e. uniform draws *with* replacement and duplicates
  possible (REFERENCE_SETTINGS.md 1.6), neither stratified nor exact in its distinct patches.

The subset is returned as sorted indices and as a ``SubsetSource`` that the Grain pipeline and the
feature extractor read like a ``SplitSource``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ssl4eo_jax.data.source import SplitSource


def subset_size(n: int, fraction: float) -> int:
    """``max(1, round(fraction * n))``; the whole split for ``fraction >= 1``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"A label fraction must lie in (0, 1], not {fraction}.")
    return n if fraction >= 1.0 else max(1, int(round(fraction * n)))


def stratified_counts(class_sizes: np.ndarray, fraction: float, total: int, rng: np.random.Generator) -> np.ndarray:
    """Per-class counts summing to ``total`` (``subset_size``), each ``fraction * n_c`` rounded down or up."""
    sizes = np.asarray(class_sizes, np.int64)
    quota = fraction * sizes
    counts = np.floor(quota).astype(np.int64)
    missing = total - int(counts.sum())
    if missing > 0:
        remainder = quota - counts
        order = np.lexsort((rng.random(len(sizes)), -remainder))  # largest remainder, random ties
        counts[order[:missing]] += 1
    return counts


def label_subset(labels: np.ndarray, fraction: float, seed: int, *, multi_label: bool = False,
                 with_replacement: bool = False) -> np.ndarray:
    """Indices (sorted) of a seeded label fraction of a split with single ``labels`` (N,).

    ``labels`` are only read for stratification (single-label, without replacement).
    """
    n = len(labels)
    rng = np.random.default_rng(seed)
    if with_replacement:  # the reference: int(frac * N) uniform draws, duplicates possible
        return np.sort(rng.choice(n, max(1, int(fraction * n)), replace=True))
    size = subset_size(n, fraction)
    if size == n:
        return np.arange(n)
    if multi_label:
        return np.sort(rng.choice(n, size, replace=False))
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = stratified_counts(np.bincount(inverse, minlength=len(classes)), fraction, size, rng)
    picked = [rng.choice(np.flatnonzero(inverse == c), counts[c], replace=False) for c in range(len(classes))]
    return np.sort(np.concatenate(picked))


def split_labels(source: SplitSource) -> np.ndarray:
    """The single labels of every patch of a split, read from the record headers only."""
    from ssl4eo_jax.data.records import decode_header

    return np.asarray([decode_header(source.raw(i))[0]["label"] for i in range(len(source))], np.int64)


class SubsetSource:
    """A ``SplitSource`` restricted to ``indices`` (duplicates allowed), read by the same pipeline."""

    def __init__(self, source: SplitSource, indices: np.ndarray):
        self.base = source
        self.indices = np.asarray(indices, np.int64)
        self.manifest = source.manifest
        self.split = source.split

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, index: int) -> bytes:
        return self.base.raw(int(self.indices[index]))

    def decode(self, raw: bytes, index: int | None = None) -> dict[str, Any]:
        return self.base.decode(raw, None if index is None else int(self.indices[index]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.decode(self.raw(index), index)

    def __repr__(self) -> str:
        return f"SubsetSource({self.base!r}, {len(self)} patches)"


def fraction_source(source: SplitSource, fraction: float, seed: int, multi_label: bool,
                    with_replacement: bool = False) -> SplitSource | SubsetSource:
    """The split itself at 100 % (without replacement), else its seeded subset."""
    if fraction >= 1.0 and not with_replacement:
        return source
    labels = np.zeros(len(source), np.int64) if multi_label or with_replacement else split_labels(source)
    return SubsetSource(source, label_subset(labels, fraction, seed, multi_label=multi_label,
                                             with_replacement=with_replacement))
