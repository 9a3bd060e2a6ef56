"""Converted datasets: records, manifests, random access (``open_split``) and the Grain pipeline.

``open_split`` and ``SplitSource`` are imported lazily, so that converters and their worker
processes, which only write records and manifests, do not pay for importing Grain.
"""

from typing import Any

from ssl4eo_jax.data.manifest import DatasetError, Manifest, load_manifest

__all__ = ["DatasetError", "Manifest", "SplitSource", "load_manifest", "open_split"]


def __getattr__(name: str) -> Any:
    if name in ("open_split", "SplitSource"):
        from ssl4eo_jax.data import source

        return getattr(source, name)
    raise AttributeError(f"module 'ssl4eo_jax.data' has no attribute {name!r}")
