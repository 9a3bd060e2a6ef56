"""The user's cache directory (demo data, compiled XLA programs): ``$SSL4EO_JAX_CACHE`` or
``~/.cache/ssl4eo_jax``."""

import os


def cache_dir() -> str:
    return os.environ.get("SSL4EO_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ssl4eo_jax"))


def enable_compilation_cache() -> None:
    """Keeps compiled programs across runs (a resumed or repeated job skips recompilation),
    unless ``JAX_COMPILATION_CACHE_DIR`` already chooses a place."""
    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", os.path.join(cache_dir(), "xla"))
