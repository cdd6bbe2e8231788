"""Run one entry point's `main` on many command lines in one process (a test helper).

    python tests/cli_driver.py experiments.serve < cases.json > results.json

cases.json: a list of argument lists. For each, the flags are reset and parsed, and `main`
runs through `jaxserve.cli` exactly as `python -m MODULE ARGS` would (flag parsing, then the
guarded main); the result is {"status", "stderr"}. An exception that escapes is written to
"stderr" as a traceback with status 1, as the interpreter would. Importing the module once
for all cases keeps a table of bad inputs cheap.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxserve import cli  # noqa: E402


def run_case(module, argv: list[str]) -> dict:
    flags.FLAGS.unparse_flags()
    err = io.StringIO()
    status = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = cli._parse_flags([module.__name__, *argv])
            cli.guarded(module.main)(args)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported like the interpreter does
            traceback.print_exc(file=err)
            status = 1
    return {"status": status, "stderr": err.getvalue()}


def main() -> None:
    module = importlib.import_module(sys.argv[1])
    cases = json.load(sys.stdin)
    json.dump([run_case(module, argv) for argv in cases], sys.stdout)


if __name__ == "__main__":
    main()
