"""Replay a trace against a running server over HTTP and summarise it as experiments.serve does.

    python -m experiments.server --model=tiny --scheduler=vllm --port=8000 &
    python -m experiments.load --url=http://127.0.0.1:8000 --workload=sharegpt_synth \
        --rate=4 --num_requests=64 --out=runs/load

The workload flags are experiments.serve's (same trace, same prompts for the same seed); the
server reports its scheduler and model. DIR/results.json has experiments.serve's schema, so
in-process and HTTP runs compare directly; each run adds "transport": "http" and the HTTP
status counts.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import serve as serve_cli

_URL = flags.DEFINE_string("url", "http://127.0.0.1:8000", "Server base URL.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 600.0, "Per-request timeout, s.", lower_bound=0.1)
_DETAILS = flags.DEFINE_bool(
    "details",
    True,
    "Ask the server for its record of each request (preemptions, swapped "
    "bytes, and the per-token server overhead when client and server share a host).",
)

# engine flags belong to experiments.server; these are the ones load takes from serve
_LOAD_FLAGS = (*serve_cli.WORKLOAD_FLAGS, "max_prompt_len", "max_output_len", "seed", "checkpoint")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    fl = flags.FLAGS
    engine_only = [h.name for h in serve_cli._ALL if h.name not in _LOAD_FLAGS]
    given = [n for n in engine_only if fl[n].present]
    if given:
        raise app.UsageError(f"--{given[0]} is an engine flag: pass it to experiments.server")
    if fl["schedulers"].present:
        raise app.UsageError("--schedulers: the server runs one scheduler; start one per policy")
    if not _URL.value.startswith(("http://", "https://")):
        raise app.UsageError(f"--url: {_URL.value!r} is not an http(s) URL")
    rates = serve_cli.check_rates()
    serve_cli.check_workload_flags()
    if fl.checkpoint and not os.path.isdir(fl.checkpoint):
        raise app.UsageError(f"--checkpoint: directory {fl.checkpoint!r} does not exist")
    settings = serve_cli.settings_from_flags([], rates)

    from jaxserve.server import load

    try:
        load.run_load(
            settings,
            _URL.value,
            out_dir=fl.out,
            tokenizer_dir=fl.checkpoint,
            details=_DETAILS.value,
            timeout=_TIMEOUT.value,
            flag_values={n: fl[n].value for n in (*_LOAD_FLAGS, "url", "details", "timeout_s")},
        )
    except load.ServerUnreachable as e:
        raise app.UsageError(f"--url: {e}") from None
    print(f"results: {os.path.join(fl.out, 'results.json')}")


if __name__ == "__main__":
    app.run(main)
