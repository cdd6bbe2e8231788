"""Command-line plumbing shared by every `experiments.*` entry point.

run(main) == absl.app.run(main), except that a wrong input ends the process with one
line on stderr, `error: <what is wrong, naming the file, flag or field>`, and no traceback:
  bad flags (parse errors, app.UsageError)             -> exit status 2
  bad files or data (InputError, missing/unreadable)   -> exit status 1
`--verbosity=1` (or higher) adds the traceback. Any other exception is a bug and keeps
its traceback.

Compiled programs are kept in a persistent cache (`$JAXSERVE_COMPILATION_CACHE`, by default
`~/.cache/jaxserve/xla`; an empty value turns it off), so a second run of a command skips
most of its warm-up.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from absl import app, flags

from jaxserve.errors import InputError

USAGE_EXIT = 2
INPUT_EXIT = 1
_INPUT_ERRORS = (
    InputError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= 2000 else msg[:2000] + " ..."


class _Failed(SystemExit):
    """The exit of a reported wrong input."""


def fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise _Failed(status)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(_one_line(e), USAGE_EXIT)


def _verbose() -> bool:
    try:
        return flags.FLAGS["verbosity"].value >= 1
    except (KeyError, flags.Error):
        return False


def guarded(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
    """`main` with wrong inputs turned into one-line errors and exit statuses."""

    def wrapped(argv):
        try:
            return main(argv)
        except app.UsageError as e:
            status, err = USAGE_EXIT, e
        except _INPUT_ERRORS as e:
            status, err = INPUT_EXIT, e
        if _verbose():
            traceback.print_exception(err)
        fail(_one_line(err), status)

    return wrapped


def use_compilation_cache() -> None:
    """Keep compiled XLA programs on disk between runs (module doc)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "jaxserve", "xla")
    path = os.environ.get("JAXSERVE_COMPILATION_CACHE", default)
    if path:
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def run(main: Callable[[list[str]], object]) -> None:
    use_compilation_cache()
    try:
        app.run(guarded(main), flags_parser=_parse_flags)
    except _Failed as e:
        # exit now: a failed checkpoint read can leave library threads that would print
        # tracebacks of their own while the interpreter shuts down, after the error line
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.code)
