"""The API's extensions reaching the engine over HTTP: per-request `priority` (the `priority`
scheduler preempts for it) and `conversation` (a chat turn continues its conversation's tokens
and, with reuse, its kept KV). A real uvicorn on 127.0.0.1 (ephemeral port), a random tiny
model with the embedded tokenizer, bounded waits.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest
from conftest import random_model, tiny_config

from jaxserve.engine import Engine
from jaxserve.runner import ModelRunner
from jaxserve.sched import SchedulerConfig
from jaxserve.server.app import RunningServer, build_app
from jaxserve.tokenizer import load_default

MODEL = "test-tiny"
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def parts():
    model = random_model(tiny_config(vocab_size=4096, max_seq_len=256))
    return model, ModelRunner(model), load_default()


def serve(parts, policy="fcfs", engine_kw=None, **sched) -> tuple[RunningServer, Engine]:
    model, runner, tok = parts
    fields = dict(max_batch=4, num_pages=96, page_size=8, max_seq_len=256, host_pages=384)
    fields.update(sched)
    engine = Engine(
        model, policy, SchedulerConfig(**fields), tok, runner=runner, **(engine_kw or {})
    )
    app, _ = build_app(engine, tok, MODEL, max_tokens=160)
    return RunningServer(app).start(), engine


def post(url: str, path: str, body: dict) -> dict:
    r = httpx.post(url + path, json={"model": MODEL, **body}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def test_priority_reaches_the_scheduler_over_http(parts):
    """max_batch 1, one token a step (slowed to >= 10 ms). A long request of priority 5 is
    streaming when a short one of priority 0 arrives: the `priority` scheduler preempts the
    long one at once, so the short one ends while the long one still has most of its tokens
    to go (first come first served would make it wait for all of them)."""
    server, engine = serve(parts, "priority", engine_kw={"decode_steps": 1}, max_batch=1)
    step = engine.step

    def slow_step():
        time.sleep(0.01)
        return step()

    engine.step = slow_step
    n_long = 120
    common = {"temperature": 0, "ignore_eos": True, "return_details": True}
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = concurrent.futures.Future()

            def long_stream() -> dict:
                body = {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": n_long, "stream": True}
                body.update(common, priority=5)
                with httpx.stream(
                    "POST", server.url + "/v1/completions", json=body, timeout=TIMEOUT
                ) as r:
                    last = None
                    for line in r.iter_lines():
                        started.done() or started.set_result(True)
                        if line.startswith("data: {"):
                            last = json.loads(line[6:])
                return last["details"]

            long_ = pool.submit(long_stream)
            started.result(TIMEOUT)
            short = post(
                server.url,
                "/v1/completions",
                {"prompt": [9, 10], "max_tokens": 4, "priority": 0, **common},
            )["details"]
            long_d = long_.result(TIMEOUT)
    finally:
        server.stop()
    assert len(long_d["token_ids"]) == n_long and len(short["token_ids"]) == 4
    short_end = short["token_times"][-1]
    done_before = sum(t < short_end for t in long_d["token_times"])
    assert done_before < n_long // 2, (done_before, n_long)
    assert long_d["preemptions"] >= 1
