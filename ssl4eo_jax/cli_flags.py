"""absl flag parsing that reports a bad command line as one ``error: ...`` line.

``app.run(main, flags_parser=parse_flags)``: a missing config file, an unknown preset or
augmentation arm (``ConfigError`` raised by the config file), a mistyped config key (with
ml_collections' "did you mean" hint), a bad flag value or an unknown flag each print one line naming
the culprit and the fix, and exit with status 1 (a traceback only with ``--verbose``).
"""

from __future__ import annotations

import glob
import os
import re
import sys

from absl import flags

from ssl4eo_jax.errors import user_message, verbose_requested

VERBOSE = flags.DEFINE_boolean("verbose", False, "Show the traceback of an error instead of its one-line message.")

_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"\?')
_MISSING_KEY = re.compile(r"^'?\\?'?([A-Za-z0-9_]+)")


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in ``argv`` (the last one wins)."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def config_file_problem(path_arg: str) -> str | None:
    """What is wrong with ``--config=<file>[:<preset>]``'s file, or None if it exists."""
    path = path_arg.split(":", 1)[0]
    if not path:
        return "--config is empty; give a config file, e.g. --config=configs/barlow.py."
    if os.path.isfile(path):
        return None
    folder = os.path.dirname(path) or "."
    known = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.py")) if not p.endswith("__init__.py"))
    hint = f"; {folder}/ holds {', '.join(known)}" if known else " (run from the repository root, where configs/ is)"
    return f"config file {path} (--config) does not exist{hint}."


def _override_problem(argv: list[str], error: BaseException) -> str | None:
    """A mistyped ``--config.a.b=v`` key, named with ml_collections' hint when it has one."""
    if not isinstance(error, (KeyError, AttributeError)):
        return None
    text = str(error).replace("\\n", "\n").replace("\\'", "'")
    hint = _DID_YOU_MEAN.search(text)
    wrong = hint.group(2) if hint else (_MISSING_KEY.match(text).group(1) if _MISSING_KEY.match(text) else None)
    if wrong is None:
        return None
    culprit = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.") and
                    re.search(rf"\.{re.escape(wrong)}(\.|=|$)", a.split("=", 1)[0] + "=")), f"key {wrong!r}")
    fix = f'did you mean "{hint.group(1)}"?' if hint else "see the config file for the available keys."
    return f"{culprit}: the config has no key {wrong!r}; {fix}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl ``flags_parser``: parses ``argv``; a bad command line exits with one line."""
    try:
        if "config" in flags.FLAGS:
            config_arg = _flag_value(argv, "config")
            problem = config_file_problem(config_arg) if config_arg is not None else None
            if problem:
                _exit(problem)
        return flags.FLAGS(argv)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - every flag-parsing failure is the command line's
        if verbose_requested(argv):
            raise
        message = user_message(e) or _override_problem(argv, e)
        if message is None:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            message += " (see --helpshort for the flags)"
        _exit(message)


def _exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
