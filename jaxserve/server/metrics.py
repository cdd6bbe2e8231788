"""Prometheus metrics of a serving engine, updated by the engine thread after every step.

    engine.step() -> events -> ServerMetrics.observe(engine, events) -> registry -> GET /metrics

Gauges read the scheduler (requests waiting, running, swapped, dropped; free KV pages; host
pages in use). Counters count events: generated tokens, preemptions, finished requests by
outcome, turns started from a conversation's kept KV and the prompt tokens that saved; a
request's prompt tokens and swapped bytes are added when it ends. Histograms take
TTFT, TBT and JCT from the engine's timeline of each request that finished ("stop" or
"length"), on the engine clock. Each server owns its registry, so several can share a process.
"""

from __future__ import annotations

import collections

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jaxserve.engine import Engine, Event

PREFIX = "jaxserve"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TBT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerMetrics:
    def __init__(self, window_s: float = 5.0):
        self.registry = CollectorRegistry()
        r, p = self.registry, PREFIX
        self.waiting = Gauge(f"{p}_requests_waiting", "Requests not yet started.", registry=r)
        self.running = Gauge(f"{p}_requests_running", "Requests with KV on device.", registry=r)
        self.swapped = Gauge(f"{p}_requests_swapped", "Preempted, KV on host.", registry=r)
        self.dropped = Gauge(f"{p}_requests_dropped", "Preempted, KV to recompute.", registry=r)
        self.inflight = Gauge(f"{p}_requests_inflight", "Admitted, not ended.", registry=r)
        self.queue_limit = Gauge(f"{p}_admission_limit", "Most requests in flight.", registry=r)
        self.free_pages = Gauge(f"{p}_kv_pages_free", "Free device KV pages.", registry=r)
        self.host_pages = Gauge(f"{p}_host_kv_pages_used", "Host KV pages held.", registry=r)
        self.tokens_per_s = Gauge(
            f"{p}_generation_tokens_per_second",
            f"Tokens generated over the last {window_s:g} s.",
            registry=r,
        )
        self.tokens = Counter(f"{p}_generation_tokens", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter(
            f"{p}_prompt_tokens", "Prompt tokens of ended requests.", registry=r
        )
        self.preemptions = Counter(f"{p}_preemptions", "Preemptions.", ["kind"], registry=r)
        self.swapped_bytes = Counter(
            f"{p}_swapped_bytes", "KV bytes moved device<->host, by ended requests.", registry=r
        )
        self.requests = Counter(
            f"{p}_requests", "Ended requests by outcome.", ["outcome"], registry=r
        )
        self.http_errors = Counter(
            f"{p}_http_errors", "Error responses by status.", ["status"], registry=r
        )
        self.reused_tokens = Counter(
            f"{p}_reused_prompt_tokens",
            "Prompt tokens started from a conversation's kept KV, not prefilled.",
            registry=r,
        )
        self.reuse_hits = Counter(
            f"{p}_conversation_hits", "Turns started from kept KV.", registry=r
        )
        self.iterations = Counter(f"{p}_engine_iterations", "Engine steps.", registry=r)
        self.ttft = Histogram(
            f"{p}_ttft_seconds", "Time to first token.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.tbt = Histogram(
            f"{p}_tbt_seconds", "Time between tokens.", buckets=TBT_BUCKETS, registry=r
        )
        self.jct = Histogram(
            f"{p}_jct_seconds", "Job completion time.", buckets=LATENCY_BUCKETS, registry=r
        )
        self._window_s = window_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._reuse_seen = (0, 0)  # the engine's (hits, tokens reused) at the last observe

    def observe(self, engine: Engine, events: list[Event], stepped: bool = True) -> None:
        """After one engine iteration (engine thread): counters, histograms, gauges."""
        if stepped:
            self.iterations.inc()
        n_tokens = 0
        for e in events:
            if e.kind == "token":
                n_tokens += 1
            elif e.kind == "preempt":
                self.preemptions.labels(kind=e.detail or "unknown").inc()
            elif e.kind in ("finish", "reject"):
                self.ended(engine, e.request_id)
        self.tokens.inc(n_tokens)
        now = engine.now()
        if n_tokens:
            self._recent.append((now, n_tokens))
        while self._recent and self._recent[0][0] < now - self._window_s:
            self._recent.popleft()
        self.tokens_per_s.set(sum(n for _, n in self._recent) / self._window_s)
        conv = engine.conversations
        hits, reused = self._reuse_seen
        self.reuse_hits.inc(conv.hits - hits)
        self.reused_tokens.inc(conv.tokens_reused - reused)
        self._reuse_seen = (conv.hits, conv.tokens_reused)
        sched = engine.scheduler
        counts = collections.Counter(r.state.value for r in sched.live)
        self.waiting.set(counts["waiting"])
        self.running.set(counts["running"])
        self.swapped.set(counts["swapped"])
        self.dropped.set(counts["dropped"])
        self.free_pages.set(sched.allocator.num_free)
        self.host_pages.set(sched.host_used)

    def ended(self, engine: Engine, request_id: str) -> None:
        """A request ended (finished, cancelled, rejected): outcome, totals, latencies."""
        tl = engine.timelines[request_id]
        reason = tl.finish_reason or "unknown"
        outcome = "rejected" if tl.rejected else reason
        self.requests.labels(outcome=outcome).inc()
        self.prompt_tokens.inc(tl.prompt_len)
        self.swapped_bytes.inc(tl.swapped_bytes)
        if reason in ("stop", "length") and tl.token_times and tl.finish_time is not None:
            self.ttft.observe(tl.token_times[0] - tl.arrival)
            for a, b in zip(tl.token_times, tl.token_times[1:]):
                self.tbt.observe(b - a)
            self.jct.observe(tl.finish_time - tl.arrival)
