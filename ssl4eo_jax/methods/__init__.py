"""Registry of SSL methods: ``get_method(config)`` builds the one named by ``config.method``."""

from __future__ import annotations

from typing import Any, Callable

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods.barlow import BarlowTwins
from ssl4eo_jax.methods.base import Method

METHODS: dict[str, Callable[[Any], Method]] = {
    "barlow": BarlowTwins,
}


def get_method(config: Any) -> Method:
    name = config.method
    if name not in METHODS:
        raise ConfigError(
            f"Unknown method {name!r} (config.method); available: {', '.join(sorted(METHODS))}."
        )
    if name not in config:
        raise ConfigError(f"config.method is {name!r} but the config has no {name!r} section with its settings.")
    return METHODS[name](config)
