"""Command-line plumbing shared by every `experiments.*` entry point.

run(main) == absl.app.run(main), except that a wrong input ends the process with one
line on stderr, `error: <what is wrong, naming the file, flag or field>`, and no traceback:
  bad flags (parse errors, app.UsageError)             -> exit status 2
  bad files or data (InputError, missing/unreadable)   -> exit status 1
`--verbosity=1` (or higher) adds the traceback. Any other exception is a bug and keeps
its traceback.

Before `main`, `jaxserve.distributed.start()` brings up the multi-process runtime the
`--coordinator/--num_processes/--process_id` flags (or the cluster) ask for. In a multi-process
run every error line names the process (`error: process 1 of 2: ...`), a lost peer is one such
line (exit status 1), and any failure exits at once instead of waiting for the others.

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

from jaxserve import distributed
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
    where = distributed.label()
    if where and not message.startswith(where):
        message = f"{where}: {message}"
    print(f"error: {message}", file=sys.stderr, flush=True)
    distributed.announce_failure(message)
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
            distributed.start()
            return main(argv)
        except app.UsageError as e:
            status, err = USAGE_EXIT, e
        except _INPUT_ERRORS as e:
            status, err = INPUT_EXIT, e
        except RuntimeError as e:
            lost = distributed.peer_failure(e)
            if lost is None:
                raise
            if _verbose():
                traceback.print_exception(e)
            fail(lost, INPUT_EXIT)
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
        # tracebacks of their own while the interpreter shuts down, after the error line;
        # in a multi-process run, waiting at JAX's shutdown barrier for peers that are still
        # running would hold this process for the whole --distributed_timeout
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.code)
    except Exception:
        if distributed.process_count() < 2:
            raise
        print(f"error: {distributed.label()}: failed with a bug:", file=sys.stderr)
        traceback.print_exc()
        distributed.announce_failure(_one_line(sys.exc_info()[1]))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
