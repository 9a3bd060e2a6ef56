"""Entry point: ``python -m ssl4eo_jax.main --config=configs/barlow.py [--workdir=DIR] [--config.x=y]``.

``config.task`` picks the job: ``pretrain`` (configs/<method>.py), ``knn``/``linear``/``finetune``
(configs/eval/<task>.py) or ``benchmark`` (configs/benchmark.py:<preset>).
"""

from __future__ import annotations

import logging as pylogging
import os

from absl import app, flags, logging
from ml_collections import config_flags

from ssl4eo_jax import cli_flags
from ssl4eo_jax.errors import UserError, run_guarded

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/<name>.py[:<preset>]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go "
                               "(default: runs/<method>_<dataset>). Re-running with the same one resumes.")
flags.mark_flag_as_required("config")

TASKS = ("pretrain", "knn", "linear", "finetune", "benchmark")


def default_workdir(config) -> str:
    if config.task == "pretrain":
        return os.path.join("runs", f"{config.method}_{config.data.name}")
    if config.task == "benchmark":
        return os.path.join("runs", f"benchmark_{config.preset}")
    return os.path.join("runs", f"{config.task}_{config.data.name}")


def run_task(config, workdir: str) -> None:
    """Dispatches on ``config.task``."""
    if config.task == "pretrain":
        from ssl4eo_jax import train

        train.run(config, workdir)
    elif config.task == "benchmark":
        from ssl4eo_jax.benchmark import driver

        driver.run(config, workdir)
    else:
        from ssl4eo_jax import evaluate

        evaluate.run(config, workdir)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config.task not in TASKS:
        raise UserError(f"Unknown task {config.task!r} (config.task); available: {', '.join(TASKS)}.")
    workdir = _WORKDIR.value or default_workdir(config)
    check_workdir(workdir)
    logging.info("Config:\n%s", config)
    from ssl4eo_jax import distributed  # imported here so that --help is fast
    from ssl4eo_jax.cache import enable_compilation_cache

    enable_compilation_cache()
    distributed.initialize(config)
    run_task(config, workdir)


def check_workdir(workdir: str) -> None:
    """Checks, before any work is done and without creating anything, that the work dir (or the
    nearest existing folder above it) is a folder in which files can be written."""
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"cannot use the work dir {workdir}: {existing} is a file, not a folder; choose another "
                        "--workdir.")
    probe = os.path.join(existing, f".ssl4eo-write-test-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to the work dir {workdir} ({existing}: {e.strerror}); choose another "
                        "--workdir.") from e


class _QuietLibraries:
    """Keeps the INFO chatter of orbax and grain out of the log (warnings still show)."""

    NOISY = ("/orbax/", "/grain/")

    def filter(self, record) -> bool:  # noqa: A003 - logging.Filter protocol
        return record.levelno >= pylogging.WARNING or not any(n in record.pathname for n in self.NOISY)


def _setup_logging() -> None:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())


def run() -> None:
    app.call_after_init(_setup_logging)
    run_guarded(lambda: app.run(main, flags_parser=cli_flags.parse_flags))


if __name__ == "__main__":
    run()
