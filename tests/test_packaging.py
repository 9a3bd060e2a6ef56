"""The accelerator extras of setup.py (``.[cuda12]``, ``.[cuda13]``, ``.[tpu]``) pull the runtimes
that the pinned jax itself names in its extras, at the same versions."""

from __future__ import annotations

import ast
import os
import re
from importlib.metadata import metadata, version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_literal(name: str):
    """A module-level literal assigned in setup.py (read without running setup())."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py has no {name}")


def _pins(requirements: list[str]) -> dict[str, str]:
    """package -> exact version spec (``==x`` or jax's ``<=x,>=x``, normalised to ``==x``)."""
    out = {}
    for req in requirements:
        req = req.split(";")[0].strip()
        name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower()
        spec = req[len(name):]
        spec = re.sub(r"^\[[^\]]*\]", "", spec).strip()
        exact = re.fullmatch(r"<=([^,]+),>=\1", spec) or re.fullmatch(r">=([^,]+),<=\1", spec)
        out[name] = f"=={exact.group(1)}" if exact else spec
    return out


def _jax_extra(extra: str) -> dict[str, str]:
    requires = metadata("jax").get_all("Requires-Dist")
    return _pins([r for r in requires if re.search(rf'extra == "{extra}"', r)])


def test_setup_pins_the_jax_the_extras_are_checked_against():
    assert '"jax==0.10.2"' in open(os.path.join(ROOT, "setup.py")).read()
    assert version("jax") == "0.10.2"


def test_accelerator_extras_match_the_pinned_jax():
    extras = _setup_literal("ACCELERATORS")
    assert sorted(extras) == ["cuda12", "cuda13", "tpu"]
    for extra, requirements in extras.items():
        ours, theirs = _pins(requirements), _jax_extra(extra)
        theirs.pop("jaxlib")  # pinned by install_requires already
        for package, spec in theirs.items():
            assert ours.get(package) == spec, (extra, package, ours.get(package), spec)
        if extra.startswith("cuda"):  # the plugin's PJRT runtime, at the same version
            pjrt = f"jax-{extra}-pjrt"
            assert ours[pjrt] == f"=={version('jax')}", (extra, ours)
            assert f"jax-{extra}-plugin[with-cuda]" in " ".join(requirements)


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    """Top-level modules each file of ``package`` imports (function-level imports included)."""
    found: dict[str, set[str]] = {}
    for root, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            mods = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Import):
                    mods |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
            found[os.path.relpath(path, ROOT)] = mods
    return found


def test_package_boundaries_run_one_way():
    """The library imports neither the config files nor the converters; the configs import only the
    library (and ml_collections); nothing installs a top-level package named ``configs``."""
    library = {f: m & {"configs", "data_prep"} for f, m in _imported_top_levels("ssl4eo_jax").items()}
    assert {f: m for f, m in library.items() if m} == {}
    configs = {f: m & {"configs", "data_prep"} for f, m in _imported_top_levels("configs").items()}
    assert {f: m for f, m in configs.items() if m} == {}
    assert not os.path.exists(os.path.join(ROOT, "configs", "__init__.py"))
    packages = open(os.path.join(ROOT, "setup.py")).read().split("packages=find_packages(include=")[1].split(")")[0]
    assert "configs" not in packages and '"ssl4eo_jax"' in packages


def test_a_wrong_configs_directory_is_refused_not_replaced(monkeypatch, tmp_path):
    """``$SSL4EO_JAX_CONFIGS`` set to a folder without configs is an error naming it, never a silent
    fall-back to the checkout's configs/."""
    import pytest

    from ssl4eo_jax.errors import ConfigError
    from ssl4eo_jax.presets.files import ENV, configs_dir, load_config_module

    monkeypatch.setenv(ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=f"{ENV}={tmp_path} holds no config files"):
        configs_dir()
    monkeypatch.setenv(ENV, os.path.join(ROOT, "configs"))
    assert configs_dir() == os.path.join(ROOT, "configs")
    with pytest.raises(ConfigError, match="No config file .*barlw.py; the configs there: barlow"):
        load_config_module("barlw")
