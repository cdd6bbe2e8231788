"""Server shutdown, a stopped engine loop, and a soak under KV memory pressure."""

from __future__ import annotations

import asyncio
import collections
import json

import httpx
import numpy as np
import pytest
from server_helpers import MODEL, TIMEOUT, Server, _first_chunks, _SlowSteps, reference

from jaxserve.server import client


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
