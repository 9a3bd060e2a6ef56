"""Errors in what the user gave us (config, data, work directory), and how command lines report them.

Every command line (``ssl4eo_jax.main``, ``.export``, ``.bench``, ``.evaluate``, each ``data_prep``
module) prints these as one ``error: ...`` line without a traceback and exits with status 1; each
message names the culprit (file, key, value) and the fix. ``--verbose`` (or ``SSL4EO_JAX_VERBOSE=1``)
shows the traceback instead, for debugging.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import traceback
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """A problem with the user's input rather than a bug."""


class ConfigError(UserError):
    """An unknown or inconsistent config value."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


_CONFIG_TRACE_PREFIX = "Error whilst parsing config file"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes / contexts, outermost first."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _user_error_text(exc: UserError) -> str:
    """A UserError's message; ml_collections re-raises errors of config files with the traceback as
    the message (``Error whilst parsing config file: ...``), whose last line is the original one."""
    text = str(exc)
    if text.startswith(_CONFIG_TRACE_PREFIX):
        last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return text


def _os_error_text(exc: OSError) -> str | None:
    where = exc.filename or "a file"
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the device while writing {where}. Free some space or choose a work dir "
                "on another disk (--workdir); re-running the same command resumes from the last complete "
                "checkpoint.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where} ({os.strerror(exc.errno)}); choose a writable location (e.g. --workdir)."
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and exc.filename:
        return f"cannot create the directory {where}: a file of that name is in the way; choose another path."
    return None


# How a collective or the coordination service reports that another process of the run is gone.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "heartbeat timeout",
              "tasks are unhealthy", "Gloo all-reduce failed", "Gloo all-gather failed")


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says that another process of a multi-process run stopped."""
    return any(marker in str(e) for e in _chain(exc) for marker in _PEER_LOST)


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input or machine (not a bug), else None."""
    for e in _chain(exc):
        if isinstance(e, UserError):
            return _user_error_text(e)
    if peer_lost(exc):
        first = str(exc).strip().splitlines()[0][:300]
        return (f"another process of this multi-process run stopped ({first}). Find why in its log, then "
                "start all processes again with the same command: they resume from the last checkpoint.")
    for e in _chain(exc):
        if isinstance(e, OSError):
            text = _os_error_text(e)
            if text:
                return text
        elif "No space left on device" in str(e):  # tensorstore (orbax) reports ENOSPC as a ValueError
            paths = re.findall(r'"(/[^"]+)"', str(e))
            return _os_error_text(OSError(errno.ENOSPC, "No space left on device", paths[-1] if paths else None))
    return None


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose command-line errors (a missing, unknown or malformed
    argument) are one ``error: ...`` line naming the program, the argument and ``--help``, exit 1.
    Run as ``python -m package.module``, the program is named so."""

    def __init__(self, *args, **kwargs) -> None:
        if "prog" not in kwargs and sys.argv and sys.argv[0].endswith(".py"):
            path = os.path.abspath(sys.argv[0])
            module = os.path.splitext(os.path.basename(path))[0]
            kwargs["prog"] = f"python -m {os.path.basename(os.path.dirname(path))}.{module}"
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(1)


def verbose_requested(argv: list[str] | None = None) -> bool:
    """``--verbose`` on the command line or ``SSL4EO_JAX_VERBOSE=1``: show tracebacks."""
    argv = sys.argv if argv is None else argv
    return "--verbose" in argv or os.environ.get("SSL4EO_JAX_VERBOSE", "") not in ("", "0")


def run_guarded(main: Callable[[], T], argv: list[str] | None = None) -> T:
    """Runs a command line's ``main``: user errors become one ``error: ...`` line and exit status 1
    (a traceback only with ``--verbose``); Ctrl-C exits 130 with a note on resuming."""
    try:
        return main()
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to resume where it stopped", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - classified below; bugs keep their traceback
        message = user_message(e)
        if message is None or verbose_requested(argv):
            raise
        traceback.clear_frames(e.__traceback__)
        _close_progress_bars()
        print(f"error: {message}", file=sys.stderr)
        if peer_lost(e):  # jax.distributed's exit barrier would wait out the heartbeat timeout, then abort
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        sys.exit(1)


def _close_progress_bars() -> None:
    """Ends the open tqdm bars, so that the error starts a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
