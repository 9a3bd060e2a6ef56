"""Exact per-band mean/std, accumulated image by image and merged across shards and processes.

Uses the parallel form of Welford's algorithm (Chan et al.), in float64, so the statistics of a
dataset do not depend on how it was split into shards or workers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class BandStats:
    """Running count, mean and sum of squared deviations (M2) per band."""

    count: float = 0.0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def update(self, image: np.ndarray) -> None:
        """Adds every pixel of ``image`` (..., C); the last axis is the band axis."""
        pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
        mean = pixels.mean(axis=0)
        m2 = ((pixels - mean) ** 2).sum(axis=0)
        self.merge(BandStats(float(pixels.shape[0]), mean, m2))

    def merge(self, other: "BandStats") -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean.copy(), other.m2.copy()
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per band."""
        return np.sqrt(self.m2 / self.count)

    def to_json(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0.0, "mean": [], "m2": []}
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BandStats":
        if not data["count"]:
            return cls()
        return cls(float(data["count"]), np.asarray(data["mean"], np.float64), np.asarray(data["m2"], np.float64))
