"""Helpers of the HTTP server tests: a `Server` (a real uvicorn on 127.0.0.1, an ephemeral
port, the official `openai` client), reference outputs from the same engine in-process, and
ways to drop a stream or slow the engine down. The `parts` and `server` fixtures are in conftest.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import openai

from jaxserve.engine import Engine
from jaxserve.sampling import SamplingParams
from jaxserve.sched import SchedulerConfig
from jaxserve.server.app import build_app
from jaxserve.server.running import RunningServer

MODEL = "test-tiny"
EOS = 2
TIMEOUT = 60.0  # per HTTP call; every wait loop below is bounded too


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
