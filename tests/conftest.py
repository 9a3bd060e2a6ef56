"""Test setup: 8 simulated CPU devices (set before JAX is imported) and a tiny demo dataset."""

import os
import tempfile

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are shared by the tests (and the subprocesses they start) through JAX's cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ssl4eo_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests are compile-bound: without LLVM's optimisations XLA:CPU compiles short runs about twice
# as fast (the whole suite from a fresh clone on a 2-core Xeon: 14.7 min, 17.7 min without this
# flag). Subprocesses inherit it. The
# step-equivalence tests run our step in a child process at the default level, as users' runs
# compile (tests/official/harness.py run_jax): at level 0, on an AVX-512 Xeon, DINO's BN shifts came
# out 10 % of their scale from the float64 official step after one update, against 2e-5 at the
# default level, within the official code's own float32 error. Speed is measured by
# `python -m ssl4eo_jax.bench`, never by the tests.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # Grain's multiprocessing reads absl flags.

TINY_SIZES = {"train": 96, "val": 48, "test": 48}
TINY_PATCH = 36


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> str:
    """A small demo dataset (24 px patches), generated once per test session."""
    from ssl4eo_jax.data.demo import generate

    out = str(tmp_path_factory.mktemp("data") / "demo_tiny")
    return generate(out, TINY_SIZES, size=TINY_PATCH, seed=0, records_per_shard=40, progress=False)


def tiny_config(data_dir: str, **overrides):
    """The Barlow Twins config at toy scale: 32 px crops, a small projector, a few steps."""
    from ssl4eo_jax.presets.files import get_config
    from ssl4eo_jax.presets.pretrain import apply_overrides

    config = get_config("barlow", "demo")
    config.data.dir = data_dir
    config.data.global_batch = 32
    config.data.workers = 0
    config.aug.crop_size = 32
    config.barlow.projector = (64, 64, 64)
    config.train.steps = 4
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.optim.warmup_epochs = 0.0
    config.eval.batch = 32
    config.eval.linear.epochs = 5
    apply_overrides(config, overrides)
    return config


@pytest.fixture
def x64():
    """float64 JAX for the test (the losses' NumPy re-derivations are float64)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)
