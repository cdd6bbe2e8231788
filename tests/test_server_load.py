"""The load client replays experiments.serve's trace over HTTP: same prompts, same tokens, same
summary schema; and the two entry points' usage errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import random_model, tiny_config
from server_helpers import keep_released

from jaxserve import metrics, serve, serve_report, serve_trace, workload
from jaxserve.engine import Engine
from jaxserve.runner import ModelRunner
from jaxserve.sched import SchedulerConfig
from jaxserve.server import client, load
from jaxserve.server.app import build_app
from jaxserve.server.running import RunningServer
from jaxserve.tokenizer import load_default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = serve.ServeSettings(
    schedulers=["vllm"],
    workload="sharegpt_synth",
    rates=[40.0],
    num_requests=10,
    max_batch=4,
    kv_pages=48,
    page_size=8,
    max_prompt_len=40,
    max_output_len=24,
    scale=0.05,
    seed=3,
)


@pytest.fixture(scope="module")
def setup():
    model = random_model(tiny_config(vocab_size=4096, max_seq_len=256))
    runner, tok = ModelRunner(model), load_default()
    s = SETTINGS
    sc = SchedulerConfig(
        max_batch=s.max_batch,
        num_pages=s.kv_pages,
        page_size=s.page_size,
        max_seq_len=256,
        host_pages=4 * s.kv_pages,
    )

    def engine():
        return Engine(model, "vllm", sc, tok, runner=runner)

    srv_engine = engine()
    srv_engine.records = keep_released(srv_engine)
    app, _ = build_app(srv_engine, tok, "test-tiny", max_tokens=s.max_output_len)
    with RunningServer(app) as srv:
        yield engine, srv_engine, srv, tok


def test_http_replay_matches_in_process_replay(setup):
    make_engine, srv_engine, srv, tok = setup
    s = SETTINGS
    trace = serve_trace.trace_for(s, s.rates[0], tok)
    assert len({r.output_len for r in trace}) > 3  # lengths vary, below the cap too
    # in-process, as experiments.serve replays it
    engine = make_engine()
    rng = np.random.default_rng(s.seed)
    prompts = {r.id: serve_trace.prompt_ids_for(r, tok, 4096, rng) for r in trace}
    engine.replay(
        [
            (r.arrival, serve_trace._submitter(engine, r, prompts[r.id], s.max_output_len))
            for r in trace
        ]
    )
    local = [serve_report.to_record(engine.timelines[r.id]) for r in trace]
    # over HTTP, prompts and caps as experiments.load makes them
    card = client.server_info(srv.url)
    http_prompts, caps = load.requests_for(s, trace, tok, card)
    assert http_prompts == prompts
    rep = client.replay(srv.url, card["id"], trace, http_prompts, caps)
    assert rep.statuses == {200: len(trace)}
    for r, a, b in zip(trace, local, rep.records):
        assert a.prompt_len == b.prompt_len == len(prompts[r.id])
        assert a.output_ids == b.output_ids and len(b.output_ids) == r.output_len
        assert b.state == a.state == "finished"
        assert b.first_token_time >= b.arrival and b.finish_time >= b.first_token_time
    # the server got the same prompts
    served = {tl.prompt_len for tl in srv_engine.records.values()}
    assert served == {len(p) for p in prompts.values()}
    ours, theirs = metrics.summarize(local), load.summarize(rep, s)
    assert set(ours) <= set(theirs) and ours["num_finished"] == theirs["num_finished"]
    assert ours["output_tokens"] == theirs["output_tokens"]
    assert len(rep.overhead) == theirs["output_tokens"]
    # the TTFT at the client in four parts (send delay, send to engine submit, the engine's
    # first token, its delivery) that add up to it, the last three never negative
    assert len(rep.ttft_parts) == len(trace)
    for rec, parts in zip(rep.records, rep.ttft_parts):
        assert sum(parts) == pytest.approx(rec.first_token_time - rec.arrival, abs=1e-6)
        assert min(parts[1:]) >= 0
    assert set(theirs["mean_ttft_parts"]) == set(load.TTFT_PARTS)
    # client receipt after engine emission (one monotonic clock), and not by seconds
    assert 0 <= min(rep.overhead) and max(rep.overhead) < 5


def _run(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_load_cli_writes_serve_schema(setup, tmp_path):
    _, _, srv, _ = setup
    s = SETTINGS
    r = _run(
        "experiments.load",
        f"--url={srv.url}",
        "--num_requests=4",
        "--rate=40",
        f"--max_prompt_len={s.max_prompt_len}",
        f"--max_output_len={s.max_output_len}",
        "--slo_ttft=5",
        f"--out={tmp_path}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    (run,) = data["runs"]
    assert run["scheduler"] == "vllm" and run["rate"] == 40 and run["prefill"] == "base"
    summary = run["summary"]
    assert summary["num_finished"] == 4 and summary["transport"] == "http"
    assert summary["slo_ttft_attainment"] is not None
    assert set(metrics.summarize([])) <= set(summary)
    assert len(metrics.records_from_json(run["requests"])) == 4
    assert data["flags"]["url"] == srv.url and data["server"]["max_tokens"] == s.max_output_len


@pytest.mark.parametrize(
    "module, args, message",
    [
        ("experiments.server", ["--rate=3"], "experiments.load"),
        ("experiments.server", ["--host=not-an-ip"], "--host"),
        ("experiments.server", ["--kv_pages=1"], "--kv_pages"),
        ("experiments.load", ["--kv_pages=8"], "experiments.server"),
        ("experiments.load", ["--schedulers=fcfs"], "--schedulers"),
        ("experiments.load", ["--url=http://127.0.0.1:9"], "--url"),
        ("experiments.load", ["--workload=/no/such.jsonl"], "--workload"),
    ],
)
def test_usage_errors(module, args, message, tmp_path):
    r = _run(
        module, *args, f"--out={tmp_path}" if module.endswith("load") else "--port=0", timeout=120
    )
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_server_and_load_cli_against_serve(tmp_path):
    """experiments.server in its own process, experiments.load against it, experiments.serve
    on the same flags: the same tokens for every request."""
    common = [
        "--model=tiny",
        "--max_batch=4",
        "--kv_pages=64",
        "--max_prompt_len=32",
        "--max_output_len=16",
    ]
    trace = ["--num_requests=6", "--rate=20"]
    srv = subprocess.Popen(
        [sys.executable, "-m", "experiments.server", *common, "--scheduler=vllm", "--port=0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline, url = time.monotonic() + 600, None
        while url is None and time.monotonic() < deadline:
            line = srv.stdout.readline()
            assert line, "the server exited"
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        r = _run(
            "experiments.load",
            f"--url={url}",
            *trace,
            "--max_prompt_len=32",
            "--max_output_len=16",
            f"--out={tmp_path / 'http'}",
        )
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        srv.terminate()
        srv.wait(60)
    r = _run(
        "experiments.serve",
        *common,
        *trace,
        "--schedulers=vllm",
        f"--out={tmp_path / 'local'}",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    http = json.loads((tmp_path / "http" / "results.json").read_text())["runs"][0]
    local = json.loads((tmp_path / "local" / "results.json").read_text())["runs"][0]
    assert {q["id"]: q["output_ids"] for q in http["requests"]} == {
        q["id"]: q["output_ids"] for q in local["requests"]
    }


def test_http_replay_sends_conversation_turns_closed_loop():
    """A 2-turn conversation over HTTP, closed-loop as experiments.serve replays it in-process:
    turn 1 is sent when turn 0 has ended plus its think time (0.2 s), with turn 0's prompt and
    output ids followed by its new message, and with the conversation id, so the server (multi-
    turn reuse on) starts it from turn 0's kept KV: every token of turn 0 but its last one."""
    model = random_model(tiny_config(vocab_size=512, max_seq_len=128))
    sc = SchedulerConfig(max_batch=2, num_pages=32, page_size=4, max_seq_len=128, host_pages=64)
    engine = Engine(model, "vllm", sc, reuse=True)
    engine.records = keep_released(engine)
    app, _ = build_app(engine, None, "test-tiny", max_tokens=16)
    rng = np.random.default_rng(0)
    t0 = workload.TraceRequest("c-0", 0.0, 9, 6, conversation="c", turn=0)
    t1 = workload.TraceRequest("c-1", 0.2, 9 + 6 + 5, 4, conversation="c", turn=1)
    prompts = {r.id: [int(x) for x in rng.integers(3, 512, r.prompt_len)] for r in (t0, t1)}
    with RunningServer(app) as srv:
        card = client.server_info(srv.url)
        rep = client.replay(
            srv.url, card["id"], [t0, t1], prompts, {"c-0": 6, "c-1": 16}, closed_loop=True
        )
    a, b = rep.records
    assert rep.statuses == {200: 2} and a.state == b.state == "finished"
    assert len(a.output_ids) == 6 and len(b.output_ids) == 4
    assert b.arrival == pytest.approx(a.finish_time + 0.2)  # released after turn 0 + think
    assert b.prompt_len == 9 + 6 + 5  # turn 0's prompt and output, then the new message
    assert sorted(tl.prompt_len for tl in engine.records.values()) == [9, 9 + 6 + 5]
    assert rep.cached_tokens == {"c-0": 0, "c-1": 9 + 6 - 1}
