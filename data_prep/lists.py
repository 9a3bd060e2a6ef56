"""Reading the archives' split and exclusion lists, and making a seeded stratified split."""

from __future__ import annotations

import bz2
import os
import pickle
from typing import Hashable, Sequence

import numpy as np

from ssl4eo_jax.data.manifest import DatasetError


def find_list(folder: str, stem: str, suffixes: Sequence[str] = (".csv", ".csv.bz2", ".txt", ".pkl")) -> str | None:
    """``folder/<stem><suffix>`` for the first suffix that exists, else None."""
    for suffix in suffixes:
        path = os.path.join(folder, stem + suffix)
        if os.path.isfile(path):
            return path
    return None


def read_rows(path: str) -> list[list[str]]:
    """Rows of a headerless list (``.txt``/``.csv``, optionally ``.bz2``; CRLF or LF), comma-separated.

    A ``.pkl`` holds a pickled list of names (SEN12MS ``*_list.pkl``).
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: list file not found")
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                return [[str(name)] for name in pickle.load(f)]
        opener = bz2.open if path.endswith(".bz2") else open
        with opener(path, "rt", newline="") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, pickle.UnpicklingError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the list ({e})") from e
    return [line.strip().split(",") for line in lines if line.strip()]


def read_names(path: str) -> list[str]:
    """The first column of a list file, in file order."""
    return [row[0] for row in read_rows(path)]


def stratified_split(
    labels: Sequence[Hashable], fractions: Sequence[float], seed: int
) -> list[list[int]]:
    """Indices of each part of a per-class seeded random split (sorted within each part).

    Class ``c`` with ``n`` items gives ``round(f_k * n)`` items to every part but the last, which
    takes the rest; the permutation of each class comes from ``default_rng([seed, class rank])``.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"Split fractions {list(fractions)} must be >= 0 and sum to 1.")
    parts: list[list[int]] = [[] for _ in fractions]
    classes = sorted(set(labels), key=str)
    for rank, cls in enumerate(classes):
        members = [i for i, label in enumerate(labels) if label == cls]
        order = np.random.default_rng([seed, rank]).permutation(len(members))
        start = 0
        for k, fraction in enumerate(fractions):
            stop = len(members) if k == len(fractions) - 1 else start + int(round(fraction * len(members)))
            parts[k].extend(members[i] for i in order[start:stop])
            start = stop
    return [sorted(part) for part in parts]
