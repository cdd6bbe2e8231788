"""The HTTP server end to end: a real uvicorn on 127.0.0.1 (ephemeral port), the official
`openai` client, raw HTTP for what that client cannot send, and the engine's own state.

Every server here serves a random tiny model with the embedded tokenizer. Outputs are checked
against the same engine run in-process (greedy decoding does not depend on batching or
preemption), so a streamed or a non-streamed response must carry exactly the reference tokens.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import re
import time

import httpx
import numpy as np
import openai
import pytest
from conftest import random_model, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve.engine import Engine
from jaxserve.runner import ModelRunner
from jaxserve.sampling import SamplingParams
from jaxserve.sched import SchedulerConfig
from jaxserve.server import client
from jaxserve.server.app import build_app
from jaxserve.server.running import RunningServer
from jaxserve.tokenizer import load_default

MODEL = "test-tiny"
EOS = 2
TIMEOUT = 60.0  # per HTTP call; every wait loop below is bounded too


@pytest.fixture(scope="module")
def parts():
    model = random_model(tiny_config(vocab_size=4096, max_seq_len=256))
    return model, ModelRunner(model), load_default()


def _engine(parts, policy="fcfs", **overrides) -> Engine:
    model, runner, tok = parts
    fields = dict(max_batch=4, num_pages=96, page_size=8, max_seq_len=256, host_pages=384)
    fields.update(overrides)
    return Engine(model, policy, SchedulerConfig(**fields), tok, runner=runner)


def reference(parts, prompt_ids, n, ignore_eos=False) -> list[int]:
    """Greedy tokens of one request run alone in-process."""
    engine = _engine(parts)
    stop = () if ignore_eos else (EOS,)
    rid = engine.submit(prompt_ids, SamplingParams(max_new_tokens=n, stop_token_ids=stop))
    engine.run_until_done(max_iterations=10 * n + 10)
    return engine.output(rid)


def keep_released(engine) -> dict:
    """The timelines the server loop releases from `engine`, kept for the test to read."""
    records, forget = {}, engine.release

    def release(rid: str) -> None:
        records[rid] = engine.timelines[rid]
        forget(rid)

    engine.release = release
    return records


class Server:
    def __init__(self, parts, policy="fcfs", max_inflight=64, max_tokens=48, **sched):
        self.engine = _engine(parts, policy, **sched)
        self.records = keep_released(self.engine)
        self.app, self.loop = build_app(
            self.engine, parts[2], MODEL, max_inflight=max_inflight, max_tokens=max_tokens
        )
        self.running = RunningServer(self.app).start()
        self.url = self.running.url
        self.openai = openai.OpenAI(
            base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=TIMEOUT
        )

    def record(self, rid: str):
        """A request's timeline, once the engine has released it (or while it runs)."""
        return self.records.get(rid) or self.engine.timelines[rid]

    def idle(self, timeout=TIMEOUT) -> bool:
        """Wait until the engine holds no request (bounded); True if it got there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.engine.scheduler.num_live == 0 and self.loop.inflight == 0:
                return True
            time.sleep(0.02)
        return False

    def assert_no_leak(self):
        sched = self.engine.scheduler
        assert self.idle()
        assert sched.allocator.num_free == sched.config.usable_pages
        assert sched.host_used == 0
        sched.check_invariants()

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(self.url + "/metrics", timeout=TIMEOUT).text
        m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def stop(self):
        self.running.stop()


@pytest.fixture(scope="module")
def server(parts):
    s = Server(parts)
    yield s
    s.stop()


def _details(obj) -> dict:
    return obj.model_extra["details"]


def test_completion_and_stream_match_the_in_process_engine(server, parts):
    tok = parts[2]
    ids = tok.encode("The quick brown fox")
    want = reference(parts, ids, 12)
    r = server.openai.completions.create(
        model=MODEL,
        prompt="The quick brown fox",
        max_tokens=12,
        temperature=0,
        extra_body={"return_details": True},
    )
    assert _details(r)["token_ids"] == want
    assert r.choices[0].text == tok.decode(want)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(want)
    assert r.choices[0].finish_reason == ("stop" if want[-1] == EOS else "length")
    # the same request as token ids, streamed: one chunk per token, same text
    chunks = list(
        server.openai.completions.create(
            model=MODEL,
            prompt=ids,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == len(want) and not chunks[-1].choices
    text_chunks = chunks[:-1]
    assert len(text_chunks) == len(want)
    assert "".join(c.choices[0].text for c in text_chunks) == tok.decode(want)
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == r.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])


def test_chat_streamed_and_not(server, parts):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}]
    ids = parts[2].encode("System: You are terse.\nUser: Hi!\nAssistant:")
    want = reference(parts, ids, 10, ignore_eos=True)
    r = server.openai.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True, "return_details": True},
    )
    assert _details(r)["token_ids"] == want and r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == parts[2].decode(want)
    assert r.choices[0].finish_reason == "length"
    stream = server.openai.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_completion_tokens=10,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_ends_the_text_before_it(server, parts):
    tok = parts[2]
    ids = tok.encode("Once upon a time")
    full = tok.decode(reference(parts, ids, 16, ignore_eos=True))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3 and stop.strip()
    before = full[: full.index(stop)]
    for stream in (False, True):
        r = server.openai.completions.create(
            model=MODEL,
            prompt=ids,
            max_tokens=16,
            temperature=0,
            stop=[stop],
            stream=stream,
            extra_body={"ignore_eos": True},
        )
        if stream:
            chunks = list(r)
            text = "".join(c.choices[0].text for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        assert text == before and reason == "stop"


def test_concurrent_streams_each_get_their_own_tokens(server, parts):
    tok = parts[2]
    prompts = [f"Request number {i} says" for i in range(8)]
    want = {
        p: reference(parts, tok.encode(p), 8 + i, ignore_eos=True) for i, p in enumerate(prompts)
    }

    def run(i, p):
        s = server.openai.completions.create(
            model=MODEL,
            prompt=p,
            max_tokens=8 + i,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return "".join(c.choices[0].text for c in s)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(run, range(8), prompts))
    assert got == [tok.decode(want[p]) for p in prompts]
    assert server.engine.iterations > 0
    server.assert_no_leak()


def _first_chunks(url: str, body: dict, n: int) -> str:
    """Open a stream, read n chunks, then drop the connection; returns the request id."""
    with httpx.Client(timeout=TIMEOUT) as c, c.stream("POST", url, json=body) as resp:
        assert resp.status_code == 200
        seen, rid = 0, None
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                rid = json.loads(line[6:])["id"]
                seen += 1
                if seen == n:
                    break
    return rid


@pytest.mark.parametrize("chat", [False, True])
def test_disconnect_cancels_and_frees_pages(server, chat):
    before = server.metric("jaxserve_requests_total", '{outcome="cancelled"}')
    body = {"model": MODEL, "max_tokens": 48, "stream": True, "ignore_eos": True}
    if chat:
        body["messages"] = [{"role": "user", "content": "Tell me a very long story"}]
        url = server.url + "/v1/chat/completions"
    else:
        body["prompt"] = "Tell me a very long story"
        url = server.url + "/v1/completions"
    rid = _first_chunks(url, body, 2)
    assert server.idle()
    tl = server.record(rid)
    assert tl.finish_reason == "cancelled" and 2 <= len(tl.output_ids) < 48
    server.assert_no_leak()
    assert server.metric("jaxserve_requests_total", '{outcome="cancelled"}') == before + 1


class _SlowSteps:
    """Each engine step takes `delay` seconds longer while active (the engine thread looks the
    method up every iteration) and makes one token (no multi-step chunks), so a request is
    surely still running when the test acts."""

    def __init__(self, engine: Engine, delay: float = 0.02):
        self.engine, self.delay = engine, delay

    def __enter__(self):
        step = type(self.engine).step.__get__(self.engine)

        def slow():
            time.sleep(self.delay)
            return step()

        self.engine.step = slow
        self.steps, self.engine.decode_steps = self.engine.decode_steps, 1
        return self

    def __exit__(self, *exc):
        del self.engine.step
        self.engine.decode_steps = self.steps


@pytest.mark.parametrize("delay, timeout", [(0.02, 0.4), (1.0, 0.3)], ids=["running", "queued"])
def test_disconnect_of_a_non_streaming_request_cancels_it(server, delay, timeout):
    """The client gives up after `timeout` s: while its request runs (48 steps of > 20 ms), or
    before its first token (the first step takes > 1 s)."""
    body = {
        "model": MODEL,
        "prompt": "Tell me a very long story",
        "max_tokens": 48,
        "ignore_eos": True,
    }
    httpx.post(server.url + "/v1/completions", json={**body, "max_tokens": 3}, timeout=TIMEOUT)
    assert server.idle()
    n = len(server.records)  # (that compiled what this request runs)
    with _SlowSteps(server.engine, delay):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server.url + "/v1/completions", json=body, timeout=timeout)
        assert server.idle()
    (rid,) = list(server.records)[n:]
    tl = server.record(rid)
    assert tl.finish_reason == "cancelled"
    assert (len(tl.output_ids) > 1) if delay < 1 else (len(tl.output_ids) <= 1)
    server.assert_no_leak()


BAD = [
    (b"{not json", None),
    (b"\xff\xfe", None),
    (b'"a string"', None),
    (json.dumps({"prompt": ""}).encode(), "prompt"),
    (json.dumps({"model": MODEL}).encode(), "prompt"),
    (json.dumps({"prompt": [1, 99999]}).encode(), "prompt"),
    (json.dumps({"prompt": [5] * 300}).encode(), "prompt"),
    (json.dumps({"prompt": "hi", "max_tokens": 0}).encode(), "max_tokens"),
    (json.dumps({"prompt": "hi", "max_tokens": 49}).encode(), "max_tokens"),
    (json.dumps({"prompt": "hi", "temperature": 3}).encode(), "temperature"),
    (json.dumps({"prompt": "hi", "top_p": 0}).encode(), "top_p"),
    (json.dumps({"prompt": "hi", "top_k": -5}).encode(), "top_k"),
    (json.dumps({"prompt": "hi", "model": "gpt-4"}).encode(), "model"),
    (b"[" * 100_000 + b"]" * 100_000, None),
]


@pytest.mark.parametrize("raw, param", BAD)
def test_bad_input_is_a_4xx_naming_the_field(server, raw, param):
    r = httpx.post(
        server.url + "/v1/completions",
        content=raw,
        timeout=TIMEOUT,
        headers={"content-type": "application/json"},
    )
    assert 400 <= r.status_code < 500
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    assert r.status_code == (404 if param == "model" else 400)


def test_oversized_body_is_413(server):
    r = httpx.post(
        server.url + "/v1/completions",
        timeout=TIMEOUT,
        content=b'{"prompt": "' + b"x" * (17 << 20) + b'"}',
    )
    assert r.status_code == 413 and r.json()["error"]["message"]


def test_openai_client_sees_typed_errors_and_the_server_keeps_serving(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.openai.completions.create(model=MODEL, prompt="hi", max_tokens=-1)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        server.openai.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert httpx.get(server.url + "/v1/nothing", timeout=TIMEOUT).json()["error"]["message"]
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).json()["status"] == "ok"
    assert server.openai.models.list().data[0].id == MODEL
    r = server.openai.completions.create(model=MODEL, prompt="still here", max_tokens=3)
    assert r.usage.completion_tokens >= 1


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)  # what JSON can carry
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stream",
    "stream_options",
    "user",
    "n",
    "seed",
    "priority",
]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6), st.booleans())
def test_fuzz_malformed_requests(server, body, chat):
    """Random bodies: 200 or a 4xx with an OpenAI-style error, never a 5xx or a hang."""
    if "max_tokens" not in body:
        body["max_tokens"] = 2  # keep accepted requests short
    url = server.url + ("/v1/chat/completions" if chat else "/v1/completions")
    r = httpx.post(url, json=body, timeout=TIMEOUT)
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.json()["error"]["message"]


def test_overload_answers_429(parts):
    s = Server(parts, max_inflight=1)
    try:
        body = {
            "model": MODEL,
            "prompt": "hold the only slot",
            "max_tokens": 48,
            "ignore_eos": True,
            "stream": True,
        }
        with (
            httpx.Client(timeout=TIMEOUT) as c,
            c.stream("POST", s.url + "/v1/completions", json=body) as held,
        ):
            assert held.status_code == 200
            with pytest.raises(openai.RateLimitError) as e:
                s.openai.completions.create(model=MODEL, prompt="me too", max_tokens=2)
            assert e.value.status_code == 429
            assert s.metric("jaxserve_http_errors_total", '{status="429"}') == 1
            n = sum(1 for line in held.iter_lines() if line.startswith("data: {"))
            assert n == 48
        assert s.idle()
        r = s.openai.completions.create(model=MODEL, prompt="me too", max_tokens=2)
        assert r.usage.completion_tokens >= 1
    finally:
        s.stop()


def test_shutdown_cancels_what_is_left(parts):
    s = Server(parts)
    body = {
        "model": MODEL,
        "prompt": "a long one",
        "max_tokens": 48,
        "ignore_eos": True,
        "stream": True,
    }
    with _SlowSteps(s.engine, 0.05):  # 48 tokens take > 2.4 s; the grace period is 0.2 s
        with (
            httpx.Client(timeout=TIMEOUT) as c,
            c.stream("POST", s.url + "/v1/completions", json=body) as resp,
        ):
            lines = resp.iter_lines()
            first = next(line for line in lines if line.startswith("data: {"))
            rid = json.loads(first[6:])["id"]
            s.running.server.config.timeout_graceful_shutdown = 0.2
            s.stop()
    assert not s.running.thread.is_alive() and not s.loop.healthy
    tl = s.record(rid)
    assert tl.finish_reason == "cancelled" and len(tl.output_ids) < 48
    assert s.engine.scheduler.num_live == 0
    assert s.engine.scheduler.allocator.num_free == s.engine.scheduler.config.usable_pages


def test_engine_loop_stop_ends_open_streams(parts):
    """Stopping the engine thread cancels what it still holds: the open stream gets a final
    chunk (finish_reason "abort") and [DONE]; no page stays taken."""
    s = Server(parts)
    try:
        body = {
            "model": MODEL,
            "prompt": "a long one",
            "max_tokens": 48,
            "ignore_eos": True,
            "stream": True,
        }
        with _SlowSteps(s.engine, 0.05):
            with (
                httpx.Client(timeout=TIMEOUT) as c,
                c.stream("POST", s.url + "/v1/completions", json=body) as resp,
            ):
                lines = resp.iter_lines()
                first = json.loads(next(ln for ln in lines if ln.startswith("data: {"))[6:])
                s.loop.stop()
                rest = [ln[6:] for ln in lines if ln.startswith("data: ")]
        assert rest[-1] == "[DONE]"
        assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "abort"
        tl = s.record(first["id"])
        assert tl.finish_reason == "cancelled" and len(tl.output_ids) < 48
        assert s.engine.scheduler.allocator.num_free == s.engine.scheduler.config.usable_pages
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x"}, timeout=TIMEOUT)
        assert r.status_code == 503
        assert httpx.get(s.url + "/health", timeout=TIMEOUT).status_code == 503
    finally:
        s.stop()


def _soak(parts, n: int, seed: int):
    """n requests at a high rate through the load client onto a KV pool that holds ~3 of them,
    with a few streams dropped midway. Checks: every replayed request finished with the
    reference tokens, preemptions happened, no page leaked, metrics match the responses."""
    s = Server(
        parts,
        policy="skip_join_mlfq",
        num_pages=13,
        max_batch=4,
        host_pages=8,
        reserve_pages=1,
        prefetch=1,
        max_tokens=40,
        max_inflight=n + 8,
    )
    released = s.records  # the engine forgets each request once it ended
    try:
        tok = parts[2]
        rng = np.random.default_rng(seed)
        texts = [f"Soak prompt {i}: the weather today" for i in range(5)]
        prompts = [tok.encode(t) for t in texts]
        refs = [reference(parts, p, 40, ignore_eos=True) for p in prompts]
        from jaxserve.workload import TraceRequest

        trace, ids, caps, pick = [], {}, {}, {}
        for i in range(n):
            k = int(rng.integers(len(prompts)))
            out = int(rng.integers(4, 40))
            r = TraceRequest(
                id=f"s{i}",
                arrival=i / 200.0,
                prompt_len=len(prompts[k]),
                output_len=out,
                client=f"c{i % 3}",
            )
            trace.append(r)
            ids[r.id], caps[r.id], pick[r.id] = prompts[k], 40, k

        async def dropped_streams():
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            body = {
                "model": MODEL,
                "prompt": "dropped",
                "max_tokens": 40,
                "stream": True,
                "ignore_eos": True,
            }
            url = s.url + "/v1/completions"
            await asyncio.gather(
                *(loop.run_in_executor(None, _first_chunks, url, body, 1) for _ in range(3))
            )

        async def both():
            rep = asyncio.ensure_future(
                client.replay_async(s.url, MODEL, trace, ids, caps, timeout=TIMEOUT * 4)
            )
            await dropped_streams()
            return await rep

        rep = asyncio.run(both())
        assert rep.statuses == {200: n}
        # `user` is the engine's client (what fair schedulers and per-client metrics see)
        served = collections.Counter(tl.client for tl in released.values())
        assert served == collections.Counter([r.client for r in trace] + ["default"] * 3)
        for r, rec in zip(trace, rep.records):
            assert rec.state == "finished", rec
            assert rec.output_ids == refs[pick[r.id]][: r.output_len]
            assert rec.output_len == r.output_len == len(rec.token_times)
        assert sum(rec.preemptions for rec in rep.records) > 0
        # the host budget (8 pages) runs out: victims beyond it are dropped and recomputed
        assert s.metric("jaxserve_preemptions_total", '{kind="swap"}') > 0
        assert s.metric("jaxserve_preemptions_total", '{kind="drop"}') > 0
        s.assert_no_leak()
        # nothing of an ended request stays behind (a long-running server would grow)
        assert not s.engine.timelines and not s.engine.scheduler.requests
        assert httpx.get(s.url + "/health", timeout=TIMEOUT).json()["status"] == "ok"
        # metrics agree with what the clients received (3 dropped streams: cancelled)
        tokens = sum(rec.output_len for rec in rep.records)
        dropped = [tl for tl in released.values() if tl.finish_reason == "cancelled"]
        assert len(dropped) == 3
        assert s.metric("jaxserve_requests_total", '{outcome="stop"}') == n
        assert s.metric("jaxserve_requests_total", '{outcome="cancelled"}') == 3
        assert s.metric("jaxserve_generation_tokens_total") == tokens + sum(
            len(tl.output_ids) for tl in dropped
        )
        assert s.metric("jaxserve_ttft_seconds_count") == n
        assert s.metric("jaxserve_tbt_seconds_count") == tokens - n
        swapped = sum(rec.swapped_bytes for rec in rep.records)
        assert s.metric("jaxserve_swapped_bytes_total") == swapped + sum(
            tl.swapped_bytes for tl in dropped
        )
    finally:
        s.stop()


def test_soak_short(parts):
    _soak(parts, 40, seed=0)


@pytest.mark.slow
def test_soak_long(parts):
    _soak(parts, 1000, seed=1)
