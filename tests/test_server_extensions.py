"""The API's extensions reaching the engine over HTTP: per-request `priority` (the `priority`
scheduler preempts for it) and `conversation` (a chat turn continues its conversation's tokens
and, with reuse, its kept KV). A real uvicorn on 127.0.0.1 (ephemeral port), a random tiny
model with the embedded tokenizer, bounded waits.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time

import httpx
import pytest
from conftest import random_model, tiny_config

from jaxserve.engine import Engine
from jaxserve.runner import ModelRunner
from jaxserve.sched import SchedulerConfig
from jaxserve.server.app import build_app
from jaxserve.server.running import RunningServer
from jaxserve.tokenizer import load_default

MODEL = "test-tiny"
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def parts():
    model = random_model(tiny_config(vocab_size=4096, max_seq_len=256))
    return model, ModelRunner(model), load_default()


def serve(
    parts, policy="fcfs", engine_kw=None, max_chunk_s=None, **sched
) -> tuple[RunningServer, Engine]:
    model, runner, tok = parts
    fields = dict(max_batch=4, num_pages=96, page_size=8, max_seq_len=256, host_pages=384)
    fields.update(sched)
    engine = Engine(
        model, policy, SchedulerConfig(**fields), tok, runner=runner, **(engine_kw or {})
    )
    app, _ = build_app(engine, tok, MODEL, max_tokens=160, max_chunk_s=max_chunk_s)
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


def chat_turns(url: str, stream_first: bool) -> list[dict]:
    """Two greedy chat turns of conversation "c1" (the first streamed or not); the second
    sends back the first's reply. Returns both responses (usage, reply, details)."""
    common = {"temperature": 0, "max_tokens": 12, "ignore_eos": True, "conversation": "c1"}
    messages = [{"role": "user", "content": "Tell me a story about a cat."}]
    body = {"model": MODEL, "messages": messages, "return_details": True, **common}
    if stream_first:
        body.update(stream=True, stream_options={"include_usage": True})
        reply, last = "", None
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=TIMEOUT) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    last = json.loads(line[6:])
                    for c in last["choices"]:
                        reply += c["delta"].get("content", "")
        first = {"usage": last["usage"], "reply": reply, "details": last["details"]}
    else:
        out = post(url, "/v1/chat/completions", body)
        reply = out["choices"][0]["message"]["content"]
        first = {"usage": out["usage"], "reply": reply, "details": out["details"]}
    messages += [
        {"role": "assistant", "content": first["reply"]},
        {"role": "user", "content": "And then?"},
    ]
    out = post(
        url, "/v1/chat/completions", {"messages": messages, "return_details": True, **common}
    )
    second = {"usage": out["usage"], "reply": out["choices"][0]["message"]["content"]}
    return [first, second | {"details": out["details"]}]


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=TIMEOUT).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_chat_turn_of_a_conversation_reuses_the_kept_kv(parts):
    """A server with multi-turn reuse and a fresh one without it serve the same two-turn
    conversation: the second turn continues the first's own tokens on both (same prompt ids),
    only the reusing server starts it from kept KV (usage.prompt_tokens_details and the
    metrics count every token of turn 1 but its last), and the greedy replies are the same."""
    kept, kept_engine = serve(parts, engine_kw={"reuse": True})
    fresh, _ = serve(parts)
    try:
        got = chat_turns(kept.url, stream_first=True)
        want = chat_turns(fresh.url, stream_first=False)
        reused = metric(kept.url, "jaxserve_reused_prompt_tokens_total")
        hits = metric(kept.url, "jaxserve_conversation_hits_total")
    finally:
        kept.stop()
        fresh.stop()
    (t1, t2), (f1, f2) = got, want
    assert t1["details"]["token_ids"] == f1["details"]["token_ids"] and t1["reply"] == f1["reply"]
    assert t1["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    n1 = t1["usage"]["prompt_tokens"] + t1["usage"]["completion_tokens"]
    assert t2["usage"]["prompt_tokens"] == f2["usage"]["prompt_tokens"] > n1
    assert t2["usage"]["prompt_tokens_details"] == {"cached_tokens": n1 - 1}
    assert f2["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert (reused, hits) == (n1 - 1, 1)
    assert t2["details"]["token_ids"] == f2["details"]["token_ids"]
    assert t2["reply"] == f2["reply"]


def test_conversation_history_continues_only_what_extends_it():
    """Unit: the continuation is the last turn's ids plus the new text's; a text that does not
    extend the prompt and reply, or adds nothing, is tokenized afresh (None)."""
    from jaxserve.server.chat import ConversationHistory

    def tok(text: str) -> list[int]:
        return [ord(c) for c in text]

    h = ConversationHistory(max_conversations=2)
    h.record("a", "User: hi\nAssistant:", " yo", [1, 2, 3, 4])
    assert h.prompt_ids("a", "User: hi\nAssistant: yo\nUser: ok", tok) == [
        1,
        2,
        3,
        4,
        *tok("\nUser: ok"),
    ]
    assert h.prompt_ids("a", "User: hi\nAssistant:  yo\nUser: ok", tok)[:4] == [1, 2, 3, 4]
    assert h.prompt_ids("a", "User: hi\nAssistant: no\nUser: ok", tok) is None
    assert h.prompt_ids("a", "User: hi\nAssistant: yo", tok) is None
    assert h.prompt_ids("b", "User: hi\nAssistant: yo\nUser: ok", tok) is None
    h.record("b", "x", "y", [5])
    h.record("c", "x", "y", [6])  # over the bound: the least recently used ("a") goes
    assert len(h) == 2 and h.prompt_ids("a", "User: hi\nAssistant: yo\nUser: ok", tok) is None


@pytest.mark.parametrize("max_chunk_s", [None, 0.0])
def test_max_chunk_bounds_multi_step_decode(parts, max_chunk_s):
    """Requests of 40 greedy tokens one after another, alone (pages of 64 tokens: no page
    boundary stops a chunk). Unbounded, the engine decodes several steps per device call; with
    a bound of 0 s (so that an arrival would wait one step at most) every call is one step,
    once the engine has timed a step (the first request's first calls). Same tokens."""
    server, engine = serve(parts, max_chunk_s=max_chunk_s, page_size=64, num_pages=8)
    body = {"prompt": [5, 6, 7], "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    outs, calls = [], []
    try:
        for _ in range(2):
            before = engine.decode_calls
            outs.append(post(server.url, "/v1/completions", body)["choices"][0]["text"])
            calls.append(engine.decode_calls - before)
    finally:
        server.stop()
    assert outs[0] == outs[1]
    if max_chunk_s is None:
        assert calls[1] < 20
    else:
        assert calls[1] == 39  # the prefill emits token 1
