"""The serving loop: the scheduler decides, the engine carries out its plan on a real model.

    submit() -> Scheduler.schedule(now) -> Plan
                   swap_out (device -> host)  ->  drop  ->  swap_in (host -> new pages)
                   -> jitted prefill [B, T] and/or decode [B] (sampling on device)
                   -> tokens to host -> stop checks -> events -> Scheduler.update(...)

Jobs are preempted between tokens: a job the plan leaves out simply does not run this
iteration; its KV stays in its pages unless the plan swaps it out or drops it. Shapes are
bucketed (batch, prompt length and block-table width to powers of two), so after the buckets
have been seen once an iteration compiles nothing (`CompileCounter`).

A request's sampled token at position p depends only on its seed and p (see sampling.py), and
swapped KV comes back bit-exact, so greedy and seeded outputs do not depend on preemption.

Look-ahead decode. When every live request is in a decode batch and none can end by length or
needs a new page at its next token, the engine dispatches that next decode step before it
reads this one's tokens, feeding it the device-side tokens: the device never waits for the
host's bookkeeping. If the next plan runs exactly that set of requests at those positions, it
takes the tokens already computed; otherwise they are dropped. Dropping is safe: the step only
wrote KV past each request's written length, into pages it still owned at dispatch, and every
later use of those pages comes after it in device order.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxserve.kvcache.host import HostKV, HostTier
from jaxserve.models.transformer import Decoder
from jaxserve.runner import CompileCounter, ModelRunner
from jaxserve.sampling import SamplingParams
from jaxserve.sched import Plan, Request, SchedulerConfig, State, StepResult, make_scheduler
from jaxserve.tokenizer import Tokenizer


@dataclasses.dataclass
class Event:
    kind: str  # "token" | "finish" | "preempt" | "resume" | "reject"
    request_id: str
    time: float  # engine clock, seconds
    token: int | None = None  # for "token"
    detail: str | None = None  # finish reason ("stop", "length", "cancelled") or preemption kind


@dataclasses.dataclass
class Timeline:
    """What happened to one request (the engine's record; metrics are computed from it)."""

    id: str
    arrival: float
    prompt_len: int
    client: str = "default"
    token_times: list[float] = dataclasses.field(default_factory=list)
    output_ids: list[int] = dataclasses.field(default_factory=list)
    finish_time: float | None = None
    finish_reason: str | None = None
    preemptions: int = 0
    swapped_bytes: int = 0
    swap_time: float = 0.0  # this request's share of the time spent moving KV
    stall_time: float = 0.0  # time it was ready to compute but waited for swaps
    rejected: bool = False


@dataclasses.dataclass
class _Ahead:
    """A decode step dispatched before the plan that will use it."""

    rows: list[Request]  # the batch rows, in order
    lengths: list[int]  # each row's token count (prompt + generated) it expects at use
    pages: list[tuple[int, ...]]  # each row's pages at dispatch
    batch: dict  # the device batch after the step (tokens and positions advanced)
    toks: jax.Array  # [B, 1] the step's tokens


class UnknownRequestError(KeyError):
    """An id the engine was never given (`cancel`, `stream`, `output`)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def _token_ids(rid: str, prompt_ids: Sequence[int]) -> list[int]:
    """The prompt as Python ints; floats, strings and bools are a `TypeError`, not truncated."""
    ids = []
    for t in prompt_ids:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise TypeError(
                f"request {rid!r}: token ids must be integers, got {type(t).__name__} {t!r}"
            )
        ids.append(int(t))
    return ids


def _pow2(n: int, lo: int = 1) -> int:
    return max(lo, 1 << max(0, (n - 1).bit_length()))


def _pow2_range(n: int) -> list[int]:
    """The power-of-two buckets up to and including the one that holds n."""
    return [1 << i for i in range(_pow2(n).bit_length())]


class Engine:
    def __init__(
        self,
        model: Decoder,
        policy: str,
        sched_config: SchedulerConfig,
        tokenizer: Tokenizer | None = None,
        mesh: Mesh | None = None,
        host_mode: str = "auto",
        clock: Callable[[], float] = time.perf_counter,
        runner: ModelRunner | None = None,
        lookahead: bool = True,
    ):
        """`runner` may be shared between engines (one set of compiled programs).
        `lookahead`: dispatch the next decode step before reading this one (module doc)."""
        self.runner = runner if runner is not None else ModelRunner(model, mesh)
        self.config = model.config
        self.sched_config = sched_config
        self.scheduler = make_scheduler(policy, sched_config)
        self.policy = policy
        self.tokenizer = tokenizer
        self.page_size = sched_config.page_size
        self.kv = self.runner.new_kv(sched_config.num_pages, self.page_size)
        self.host = HostTier(self.runner.kv_sharding, host_mode)
        self.clock = clock
        self._t0 = clock()
        self._ids = itertools.count()
        self._tokens: dict[str, list[int]] = {}  # prompt + generated
        self._params: dict[str, SamplingParams] = {}
        self._keys: dict[str, np.ndarray] = {}
        self._host_kv: dict[str, HostKV] = {}
        self._stop_at: dict[str, int] = {}  # trace replay: emulated EOS after this many tokens
        self.lookahead = lookahead
        self._ahead: _Ahead | None = None
        self.lookahead_used = 0  # decode steps taken from a look-ahead dispatch
        self.lookahead_dropped = 0  # look-ahead steps the next plan did not use
        self.timelines: dict[str, Timeline] = {}
        self.iterations = 0
        self.busy_time = 0.0  # seconds spent in model steps
        self.swap_time = 0.0

    # -- requests -------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock() - self._t0

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        arrival: float | None = None,
        output_len: int | None = None,
        client: str = "default",
        stop_at_output_len: bool = False,
    ) -> str:
        """Queue a request; returns its id. `output_len` is known only to oracle policies.

        `stop_at_output_len` replays a trace: the request ends ("stop") after `output_len`
        tokens, as if the model had emitted EOS there. Its page needs stay bounded by
        `params.max_new_tokens`, which is all a non-oracle policy can plan with.
        """
        params = params if params is not None else SamplingParams()
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self._tokens:
            raise ValueError(f"request id {rid!r} already submitted")
        ids = _token_ids(rid, prompt_ids)
        if not ids:
            raise ValueError(f"request {rid!r}: empty prompt")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"request {rid!r}: token ids {bad[:5]} outside the vocabulary")
        if stop_at_output_len and (output_len is None or output_len < 1):
            raise ValueError(f"request {rid!r}: stop_at_output_len needs an output_len >= 1")
        arrival = self.now() if arrival is None else arrival
        if stop_at_output_len:
            self._stop_at[rid] = output_len
        self._tokens[rid] = ids
        self._params[rid] = params
        self._keys[rid] = np.asarray(
            [params.seed & 0xFFFFFFFF, zlib.crc32(rid.encode())], np.uint32
        )
        self.timelines[rid] = Timeline(rid, arrival, len(ids), client)
        self.scheduler.add(
            Request(id=rid, arrival=arrival, prompt_len=len(ids),
                    max_new_tokens=params.max_new_tokens, output_len=output_len, client=client)
        )  # fmt: skip
        return rid

    def _timeline(self, request_id: str) -> Timeline:
        tl = self.timelines.get(request_id)
        if tl is None:
            raise UnknownRequestError(f"unknown request id {request_id!r}")
        return tl

    def cancel(self, request_id: str) -> None:
        """Stop a request now; every page it holds (device or host) is freed."""
        self._timeline(request_id)
        self.scheduler.cancel(request_id)
        self._host_kv.pop(request_id, None)
        tl = self.timelines[request_id]
        if tl.finish_time is None:
            tl.finish_time, tl.finish_reason = self.now(), "cancelled"

    def output(self, request_id: str) -> list[int]:
        return self._timeline(request_id).output_ids

    @property
    def has_work(self) -> bool:
        return not self.scheduler.done

    # -- the loop -------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """One iteration: plan, swaps, compute, emit."""
        now = self.now()
        plan: Plan = self.scheduler.schedule(now)
        events: list[Event] = []
        for r in plan.rejected:
            tl = self.timelines[r.id]
            # the scheduler's reason ("rejected: <why>") reaches the record and the event
            tl.rejected, tl.finish_time, tl.finish_reason = True, now, r.finish_reason
            events.append(Event("reject", r.id, now, detail=r.finish_reason))
        self._swaps(plan, now, events)
        if not plan.batch:
            return events
        start = self.clock()
        # dispatch both programs before reading either result, so they queue back to back
        pending = []
        if plan.prefill:
            pending.append((plan.prefill, self._prefill(plan.prefill)))
        if plan.decode:
            pending.append(self._decode(plan.decode))
        elif self._ahead is not None:
            self._drop_ahead()
        sampled: dict[str, int] = {}
        for reqs, toks in pending:
            toks = np.asarray(toks).reshape(-1)
            sampled.update((r.id, int(toks[i])) for i, r in enumerate(reqs))
        elapsed = self.clock() - start
        self.busy_time += elapsed
        self.iterations += 1
        t = self.now()
        finished = set()
        for rid, tok in sampled.items():
            reason = self._emit(rid, tok, t)
            events.append(Event("token", rid, t, token=tok))
            if reason:
                finished.add(rid)
                events.append(Event("finish", rid, t, detail=reason))
        self.scheduler.update(t, StepResult(elapsed, {rid: 1 for rid in sampled}, finished))
        for rid in list(sampled):
            if self.timelines[rid].finish_time is None and self._sched_finished(rid):
                self._finish(rid, t, "length")
                events.append(Event("finish", rid, t, detail="length"))
        return events

    def _sched_finished(self, rid: str) -> bool:
        return self.scheduler.requests[rid].state == State.FINISHED

    def _swaps(self, plan: Plan, now: float, events: list[Event]) -> None:
        start = self.clock()
        for r, pages in plan.swap_out:
            host = self.host.swap_out(self.kv, pages)
            self._host_kv[r.id] = host
            self.timelines[r.id].swapped_bytes += host.nbytes
        for r in plan.drop:
            self._host_kv.pop(r.id, None)
        dropped = {r.id for r in plan.drop}
        swapped = {r.id for r, _ in plan.swap_out}
        for r in plan.preempted:
            self.timelines[r.id].preemptions += 1
            kind = "drop" if r.id in dropped else "swap" if r.id in swapped else "pause"
            events.append(Event("preempt", r.id, now, detail=kind))
        for r, pages in plan.swap_in:
            host = self._host_kv.pop(r.id)
            self.kv = self.host.swap_in(self.kv, host, pages)
            self.timelines[r.id].swapped_bytes += host.nbytes
            events.append(Event("resume", r.id, now))
        if plan.swap_out or plan.swap_in:
            self.kv.k.block_until_ready()
            spent = self.clock() - start
            self.swap_time += spent
            moved = {r.id for r, _ in plan.swap_out} | {r.id for r, _ in plan.swap_in}
            for rid in moved:
                self.timelines[rid].swap_time += spent / len(moved)
            # swaps are synchronous: every request in this iteration's batch waited for them
            for r in plan.batch:
                self.timelines[r.id].stall_time += spent

    def _sampling(self, reqs: Sequence[Request], b: int) -> dict:
        keys = np.zeros((b, 2), np.uint32)
        temp = np.zeros(b, np.float32)
        top_k = np.zeros(b, np.int32)
        top_p = np.ones(b, np.float32)
        for i, r in enumerate(reqs):
            p = self._params[r.id]
            keys[i], temp[i], top_k[i], top_p[i] = self._keys[r.id], p.temperature, p.top_k, p.top_p
        return {"keys": keys, "temperature": temp, "top_k": top_k, "top_p": top_p}

    def _block_tables(self, reqs: Sequence[Request], b: int, width: int) -> np.ndarray:
        bt = np.zeros((b, width), np.int32)
        for i, r in enumerate(reqs):
            pages = r.pages[:width]
            bt[i, : len(pages)] = pages
        return bt

    def _prefill(self, reqs: Sequence[Request]) -> jax.Array:
        """Prefill (or recompute) each request's known tokens; their next tokens [B]."""
        seqs = [self._tokens[r.id] for r in reqs]
        b = _pow2(len(reqs))
        t = _pow2(max(len(s) for s in seqs), 16)
        tokens = np.zeros((b, t), np.int32)
        lengths = np.zeros(b, np.int32)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s
            lengths[i] = len(s)
        width = math.ceil(t / self.page_size)
        bt = self._block_tables(reqs, b, width)
        batch = {
            "tokens": tokens,
            "lengths": lengths,
            "block_tables": bt,
            **self._sampling(reqs, b),
        }
        self.kv, first = self.runner.prefill(self.kv, batch)
        return first

    def _decode(self, reqs: Sequence[Request]) -> tuple[list[Request], jax.Array]:
        """One decode step for each request: (rows in batch order, their tokens [B, 1])."""
        ahead = self._take_ahead(reqs)
        if ahead is not None:
            rows, batch, toks = ahead.rows, ahead.batch, ahead.toks
        else:
            rows = list(reqs)
            b = _pow2(len(rows))
            positions = np.zeros(b, np.int32)
            tokens = np.zeros(b, np.int32)
            for i, r in enumerate(rows):
                seq = self._tokens[r.id]
                tokens[i], positions[i] = seq[-1], len(seq) - 1
            pages = max(math.ceil((p + 1) / self.page_size) for p in positions[: len(rows)])
            width = _pow2(pages)
            host_batch = {
                "tokens": tokens, "positions": positions,
                "block_tables": self._block_tables(rows, b, width),
                "active": np.arange(b) < len(rows),
                # stops are checked on the host; `remaining` only has to outlast look-aheads
                "remaining": np.full(b, 1 << 30, np.int32),
                "stop_ids": np.full((b, 1), -1, np.int32), **self._sampling(rows, b),
            }  # fmt: skip
            self.kv, batch, toks, _ = self.runner.decode(self.kv, host_batch, 1)
        if self.lookahead and self._can_look_ahead(rows, batch["block_tables"].shape[1]):
            self.kv, nxt, nxt_toks, _ = self.runner.decode(self.kv, batch, 1)
            self._ahead = _Ahead(
                rows, [len(self._tokens[r.id]) + 1 for r in rows],
                [tuple(r.pages) for r in rows], nxt, nxt_toks,
            )  # fmt: skip
        return rows, toks

    def _take_ahead(self, reqs: Sequence[Request]) -> _Ahead | None:
        """The look-ahead step, if this plan runs exactly its rows at its positions."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        if {r.id for r in reqs} == {r.id for r in ahead.rows} and all(
            len(self._tokens[r.id]) == n and tuple(r.pages) == pages
            for r, n, pages in zip(ahead.rows, ahead.lengths, ahead.pages)
        ):
            self.lookahead_used += 1
            return ahead
        self.lookahead_dropped += 1
        return None

    def _drop_ahead(self) -> None:
        self._ahead = None
        self.lookahead_dropped += 1

    def _can_look_ahead(self, rows: Sequence[Request], width: int) -> bool:
        """Will the next plan (most likely) decode exactly `rows` with the pages they own?
        Every live request is a row, and none ends by length or needs a page at its next
        token. (A stop token or a new arrival can still change the plan: then it is dropped.)
        """
        sched = self.scheduler
        if sched.num_live != len(rows):
            return False
        limit = sched.config.max_seq_len
        for r in rows:
            stop_at = self._stop_at.get(r.id)
            if (
                r.num_generated + 2 > r.max_new_tokens
                or (stop_at is not None and r.num_generated + 2 > stop_at)
                or r.context_len + 1 > limit
                or r.pages_needed(self.page_size, 1) > min(len(r.pages), width)
            ):
                return False
        return True

    def _emit(self, rid: str, token: int, t: float) -> str | None:
        """Record a token; returns a finish reason when it ends the request."""
        self._tokens[rid].append(token)
        tl = self.timelines[rid]
        tl.output_ids.append(token)
        tl.token_times.append(t)
        p = self._params[rid]
        reason = None
        if token in p.stop_token_ids:
            reason = "stop"
        elif p.stop_strings and self.tokenizer is not None:
            text = self.tokenizer.decode(tl.output_ids)
            if any(s in text for s in p.stop_strings):
                reason = "stop"
        if reason is None and len(tl.output_ids) == self._stop_at.get(rid):
            reason = "stop"
        if reason is None and len(tl.output_ids) >= p.max_new_tokens:
            reason = "length"
        if reason:
            self._finish(rid, t, reason)
        return reason

    def _finish(self, rid: str, t: float, reason: str) -> None:
        tl = self.timelines[rid]
        tl.finish_time, tl.finish_reason = t, reason
        self._host_kv.pop(rid, None)

    def warmup(self, max_prompt: int, max_context: int) -> int:
        """Compile every prefill, decode and swap bucket a run up to these lengths can hit.

        Returns the number of compilations it caused (0 when the runner is already warm).
        """
        before = CompileCounter.count()
        ps, runner, kv = self.page_size, self.runner, self.kv
        batches = _pow2_range(self.sched_config.max_batch)
        lengths = [16 * b for b in _pow2_range(max(1, math.ceil(max_prompt / 16)))]
        widths = _pow2_range(math.ceil(max_context / ps))
        for b in batches:
            samp = self._sampling([], b)
            for t in lengths:
                bt = np.zeros((b, math.ceil(t / ps)), np.int32)
                batch = {"tokens": np.zeros((b, t), np.int32), "lengths": np.zeros(b, np.int32),
                         "block_tables": bt, **samp}  # fmt: skip
                kv, _ = runner.prefill(kv, batch)
            for w in widths:
                batch = {
                    "tokens": np.zeros(b, np.int32), "positions": np.zeros(b, np.int32),
                    "block_tables": np.zeros((b, w), np.int32), "active": np.zeros(b, bool),
                    "remaining": np.ones(b, np.int32), "stop_ids": np.full((b, 1), -1, np.int32),
                    **samp,
                }  # fmt: skip
                kv, out, _, _ = runner.decode(kv, batch, 1)
                kv, _, _, _ = runner.decode(kv, out, 1)  # a look-ahead: device-side inputs
        for w in widths:  # swaps move one request's pages: up to a full block table
            kv = self.host.swap_in(kv, self.host.swap_out(kv, [0] * w), [0] * w)
        kv.k.block_until_ready()
        self.kv = kv
        return CompileCounter.count() - before

    # -- driving ------------------------------------------------------------------------

    def stream(self, request_id: str) -> Iterator[int]:
        """Yield a request's tokens as they are produced (runs the loop meanwhile)."""
        seen = 0
        tl = self._timeline(request_id)
        while True:
            out = tl.output_ids
            while seen < len(out):
                yield out[seen]
                seen += 1
            if tl.finish_time is not None:
                return
            if not self.has_work:
                return
            self.step()

    def run_until_done(self, max_iterations: int | None = None) -> None:
        for _ in itertools.count() if max_iterations is None else range(max_iterations):
            if not self.has_work:
                return
            self.step()

    def replay(self, arrivals: Sequence[tuple[float, Callable[[float], str]]]) -> None:
        """Submit each request when the clock reaches its arrival (seconds from now) and run.

        arrivals: (arrival offset, submit(arrival time on the engine clock)) sorted by time;
        a request is submitted at the first iteration boundary after it arrives, and its
        latency counts from the arrival. When the engine is idle it sleeps until the next.
        """
        pending = list(arrivals)
        base = self.now()
        i = 0
        while i < len(pending) or self.has_work:
            now = self.now() - base
            while i < len(pending) and pending[i][0] <= now:
                pending[i][1](base + pending[i][0])
                i += 1
            if self.has_work:
                self.step()
            elif i < len(pending):
                time.sleep(max(0.0, pending[i][0] - (self.now() - base)))
