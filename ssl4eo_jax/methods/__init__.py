"""Registry of SSL methods: ``get_method(config, length, mesh)`` builds the one named by
``config.method`` (mocov2, swav, simsiam, barlow, byol, simclr, vicreg, dino), found by
``discover_methods`` among this package's modules."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable

import jax

from ssl4eo_jax import short_run
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.methods.base import Method, MethodBase, TrainLength

HELPER_MODULES = ("base", "nets", "targets")  # shared pieces, not methods


def discover_methods() -> dict[str, Callable[..., Method]]:
    """Every ``MethodBase`` subclass defined in a module of this package, by its ``name``: adding a
    method is adding its file (and its ``configs/<name>.py``), with no list to edit."""
    found: dict[str, Callable[..., Method]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in HELPER_MODULES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, MethodBase) and value is not MethodBase
                    and value.__module__ == module.__name__):
                if value.name in found:
                    raise RuntimeError(f"Two methods are named {value.name!r}: {found[value.name]} and {value}.")
                found[value.name] = value
    return dict(sorted(found.items()))


METHODS: dict[str, Callable[..., Method]] = discover_methods()

__all__ = ["METHODS", "Method", "TrainLength", "get_method"]


def get_method(config: Any, length: TrainLength | None = None, mesh: jax.sharding.Mesh | None = None) -> Method:
    """The method of ``config.method``. ``length`` (steps per epoch, total steps) is needed by
    methods with schedules over the run and to derive the short-run settings that a demo preset
    leaves unset (``ssl4eo_jax.short_run``, filled into ``config`` in place); ``mesh`` is unused by
    the current methods (none depends on the device count)."""
    name = config.method
    if name not in METHODS:
        raise ConfigError(
            f"Unknown method {name!r} (config.method); available: {', '.join(sorted(METHODS))}."
        )
    if name not in config:
        raise ConfigError(f"config.method is {name!r} but the config has no {name!r} section with its settings.")
    if length is not None:  # the short-run rules (demo presets); a no-op once train.run has applied them
        batch = int(config.data.global_batch)
        short_run.resolve(config, short_run.RunSize(int(round(length.steps_per_epoch * batch)), batch,
                                                    length.total_steps))
    missing = short_run.unresolved(config)
    if missing:
        raise ConfigError(f"{', '.join(missing)} are derived from the run's size (ssl4eo_jax/short_run.py): "
                          "build the method with get_method(config, length=TrainLength(...)) or set them.")
    return METHODS[name](config, length=length, mesh=mesh)
