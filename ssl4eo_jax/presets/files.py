"""Loading the config files of ``configs/`` by path, as ``--config=configs/<name>.py`` does.

``configs/`` is a directory of the source tree, not an installed package. The benchmark grid finds
it next to its own config file (``config.configs_dir``, set by ``configs/benchmark.py``); other
callers use ``configs_dir()``: ``$SSL4EO_JAX_CONFIGS`` (an error if it holds no configs), else
``configs/`` beside the package in a source checkout (``pip install -e .``), else ``./configs``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

from ssl4eo_jax.errors import ConfigError

ENV = "SSL4EO_JAX_CONFIGS"
_CHECKOUT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def configs_dir() -> str:
    """The ``configs/`` directory (see the module docstring for the order it is looked up in)."""
    chosen = os.environ.get(ENV)
    if chosen:  # asked for explicitly: use it or say why not, never fall back silently
        if not os.path.isfile(os.path.join(chosen, "barlow.py")):
            raise ConfigError(f"{ENV}={chosen} holds no config files (no barlow.py there): point it at the "
                              "repository's configs/ directory.")
        return chosen
    for path in (_CHECKOUT, os.path.abspath("configs")):
        if os.path.isfile(os.path.join(path, "barlow.py")):
            return path
    raise ConfigError(f"No configs/ directory found (looked in ${ENV}, {_CHECKOUT} and ./configs): run from the "
                      f"repository root or set {ENV}=<repository>/configs.")


def load_config_module(name: str, directory: str | None = None) -> ModuleType:
    """``configs/<name>.py`` as a module (``name`` like ``barlow`` or ``eval/linear``)."""
    root = directory or configs_dir()
    path = os.path.join(root, *name.split("/")) + ".py"
    if not os.path.isfile(path):
        raise ConfigError(f"No config file {path}; the configs there: "
                          f"{', '.join(sorted(f[:-3] for f in os.listdir(root) if f.endswith('.py')))}.")
    module_name = "ssl4eo_jax_config_" + name.replace("/", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def get_config(name: str, arg: str | None = None, directory: str | None = None) -> Any:
    """``configs/<name>.py:<arg>``'s ``get_config(arg)``."""
    return load_config_module(name, directory).get_config(arg)
