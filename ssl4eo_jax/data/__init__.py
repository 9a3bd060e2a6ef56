"""Converted datasets: records, manifests, random access (``open_split``) and the Grain pipeline."""

from ssl4eo_jax.data.manifest import DatasetError, Manifest, load_manifest
from ssl4eo_jax.data.source import SplitSource, open_split

__all__ = ["DatasetError", "Manifest", "SplitSource", "load_manifest", "open_split"]
