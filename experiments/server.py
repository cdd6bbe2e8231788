"""Serve one model with one scheduler over HTTP (OpenAI-style API, streaming, Prometheus).

    python -m experiments.server --model=tiny --scheduler=skip_join_mlfq --port=8000
    python -m experiments.server --checkpoint=DIR --scheduler=vllm --kv_pages=256 --port=8000 \
        --prefill=kv_prediction:runs/kvp_c/final

Takes every engine flag of experiments.serve (the flags are defined there, once). Endpoints:
POST /v1/completions, /v1/chat/completions (stream: true for server-sent events);
GET /v1/models, /health, /metrics. Requests may name a `conversation` (an extension, see
`jaxserve/server/protocol.py`): with --switch=reuse or all (the default) the server keeps a
finished turn's KV on the host and starts the conversation's next turn from it;
--switch=async or lower turns reuse off. `--scheduler=priority` orders by each request's
`priority` field.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

from absl import app, flags

from experiments import serve as serve_cli
from jaxserve import cli, distributed, multihost

_SCHEDULER = flags.DEFINE_enum("scheduler", "fcfs", serve_cli.POLICIES, "Scheduling policy.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
_PORT = flags.DEFINE_integer(
    "port", 8000, "Port (0: any free one).", lower_bound=0, upper_bound=65535
)
_NAME = flags.DEFINE_string(
    "served_model_name",
    None,
    "Model name in the API (default: the preset, or the checkpoint directory's name).",
)
_MAX_INFLIGHT = flags.DEFINE_integer(
    "max_inflight", 256, "Admission limit: requests in flight beyond it get 429.", lower_bound=1
)
_MAX_CHUNK = flags.DEFINE_float(
    "max_chunk_ms",
    0.0,
    "The longest one multi-step decode call may run, in ms (0: one decode step per call, "
    "a large value: up to --decode_steps). A request that arrives meanwhile waits for it and "
    "the call queued behind it: lower is a shorter TTFT, higher fewer device calls.",
    lower_bound=0,
)
_SWITCH = flags.DEFINE_float(
    "switch_interval_s",
    0.0005,
    "Python's thread switch interval (sys.setswitchinterval).",
    lower_bound=1e-6,
)
_GRACE = flags.DEFINE_float(
    "shutdown_grace_s",
    10.0,
    "On shutdown, let open requests finish this long, then cancel them.",
    lower_bound=0,
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    given = [n for n in serve_cli.WORKLOAD_FLAGS if flags.FLAGS[n].present]
    if given:
        raise app.UsageError(
            f"--{given[0]} describes requests, not the engine: pass it to experiments.load"
        )
    try:
        ipaddress.ip_address(_HOST.value)
    except ValueError:
        raise app.UsageError(f"--host: {_HOST.value!r} is not an IP address") from None
    preset = serve_cli.check_model_flags()
    serve_cli.check_engine_flags()
    settings = serve_cli.settings_from_flags([_SCHEDULER.value], [1.0])

    import os

    import uvicorn

    from jaxserve.experiment import environment
    from jaxserve.server import replicas
    from jaxserve.server.app import build_app
    from jaxserve.server.build import chat_template_for, make_engine

    checkpoint = flags.FLAGS.checkpoint
    replicated = distributed.process_count() > 1  # process 0 serves HTTP (replicas.py)
    engine, tokenizer, source = make_engine(
        settings,
        _SCHEDULER.value,
        checkpoint=checkpoint,
        preset=preset,
        profile_path=flags.FLAGS.profile,
        load_prefill_model=serve_cli.load_kvp,
        clock=multihost.ReplicatedClock() if replicated else None,
    )
    max_chunk_s = None if _MAX_CHUNK.value is None else _MAX_CHUNK.value / 1e3
    if not distributed.is_main():
        replicas.follow(engine, max_chunk_s)
        return
    name = _NAME.value or preset or os.path.basename(os.path.normpath(checkpoint))
    app_, loop = build_app(
        engine,
        tokenizer,
        name,
        max_inflight=_MAX_INFLIGHT.value,
        max_chunk_s=max_chunk_s,
        max_tokens=settings.max_output_len,
        chat_template=chat_template_for(checkpoint, tokenizer),
        info={
            "prefill": "kv_prediction" if settings.prefill != "base" else "base",
            "model": {"source": source, "config": engine.config.to_dict()},
            "environment": environment(),
        },
    )
    leader = replicas.Leader(loop) if replicated else None
    # the engine thread and the event loop share the GIL: a token waits for the event loop
    # at most one switch interval (Python's default is 5 ms, longer than a decode step)
    sys.setswitchinterval(_SWITCH.value)
    sock = socket.socket(socket.AF_INET6 if ":" in _HOST.value else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((_HOST.value, _PORT.value))
    except OSError as e:
        raise app.UsageError(
            f"--host/--port: cannot listen on {_HOST.value}:{_PORT.value}: {e}"
        ) from None
    port = sock.getsockname()[1]
    print(
        f"serving {name} ({source}) with {_SCHEDULER.value} on http://{_HOST.value}:{port}",
        flush=True,
    )
    config = uvicorn.Config(
        app_, log_level="warning", access_log=False, timeout_graceful_shutdown=_GRACE.value
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the signal once it has shut down
        pass
    finally:
        if leader is not None:  # the engine thread has stopped: so do the other processes
            leader.end()
    print("server stopped", flush=True)


if __name__ == "__main__":
    cli.run(main)  # (brings up the multi-process runtime its flags ask for)
