"""The traces `experiments.serve` replays: each rate's requests read and checked before any
model work, the lengths warm-up must cover, and the real-time replay on an engine (closed-loop
conversation turns included).

    prepare_traces(settings, tokenizer, config) -> [PreparedTrace]   (WorkloadError on bad input)
    warmup_lengths(trace, max_seq_len)          -> (max_prompt, max_context) to compile for
    replay_trace(engine, trace, max_output_len) -> every request submitted at its arrival, served
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import TYPE_CHECKING

import numpy as np

from jaxserve import multihost, workload
from jaxserve.engine import Engine
from jaxserve.sampling import SamplingParams
from jaxserve.sched import SchedulerConfig, reject_reason
from jaxserve.workload import replay_cap

if TYPE_CHECKING:
    from jaxserve.serve import ServeSettings


def prompt_ids_for(req: workload.TraceRequest, tokenizer, vocab: int, rng) -> list[int]:
    if req.prompt_ids is not None:
        return list(req.prompt_ids)
    if req.prompt is not None and tokenizer is not None:
        return tokenizer.encode(req.prompt)[: max(1, req.prompt_len)] or [0]
    return [int(t) for t in rng.integers(3, vocab, req.prompt_len)]


@dataclasses.dataclass
class PreparedTrace:
    """One rate's trace, read and checked before any model work."""

    rate: float
    requests: list[workload.TraceRequest]
    prompts: dict[str, list[int]]  # request id -> prompt token ids
    caps: dict[str, int]  # request id -> max_new_tokens it is replayed with
    never_runs: dict[str, str]  # request id -> why the scheduler will reject it
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  # client -> weight


def never_runs_reason(
    prompt_len: int, cap: int, max_seq_len: int, kv_pages: int, page_size: int
) -> str | None:
    """Why a request can never run (the scheduler will reject it), or None: the scheduler's
    own rule, evaluated before the run so warm-up can skip it."""
    config = SchedulerConfig(
        max_batch=1, num_pages=kv_pages, page_size=page_size, max_seq_len=max_seq_len
    )
    return reject_reason(config, prompt_len, cap)


def trace_for(s: ServeSettings, rate: float, tokenizer):
    """The trace of one rate: the same arguments and seed for in-process and HTTP replays."""
    return workload.workload_for(s, rate, tokenizer.encode if tokenizer is not None else None)


def prepare_traces(s: ServeSettings, tokenizer, config) -> list[PreparedTrace]:
    """Every rate's trace, read and validated in full (`WorkloadError` naming the file and the
    request: empty, malformed, token ids outside the vocabulary) before any profiling."""
    out = []
    for rate in s.rates:
        trace = trace_for(s, rate, tokenizer)
        if not trace:
            raise workload.WorkloadError(f"--workload={s.workload}: no requests in it")
        rng = np.random.default_rng(s.seed)
        prompts, caps, never = {}, {}, {}
        for r in trace:
            ids = prompt_ids_for(r, tokenizer, config.vocab_size, rng)
            bad = [t for t in ids if not 0 <= t < config.vocab_size]
            if bad:
                raise workload.WorkloadError(
                    f"--workload={s.workload}: request {r.id!r} has token ids {bad[:3]} outside "
                    f"the model's vocabulary of {config.vocab_size}"
                )
            prompts[r.id] = ids
            caps[r.id] = replay_cap(len(ids), r.output_len, s.max_output_len, config.max_seq_len)
            why = never_runs_reason(
                len(ids), caps[r.id], config.max_seq_len, s.kv_pages, s.page_size
            )
            if why is not None:
                never[r.id] = why
        weights = workload.client_weights(trace)
        out.append(PreparedTrace(rate, trace, prompts, caps, never, weights))
    return out


def warmup_lengths(t: PreparedTrace, max_seq_len: int) -> tuple[int, int] | None:
    """(max_prompt, max_context) over the requests that can run: what warm-up must cover.
    None when no request can run (nothing to compile)."""
    ok = [r.id for r in t.requests if r.id not in t.never_runs]
    if not ok:
        return None
    max_prompt = max(len(t.prompts[i]) for i in ok)
    max_context = min(max_seq_len, max(len(t.prompts[i]) + t.caps[i] for i in ok))
    return max_prompt, max_context


def replay_trace(
    engine: Engine, t: PreparedTrace, max_output_len: int, *, closed_loop: bool = True
) -> None:
    """Serve `t` on `engine` in real time, as `Engine.replay` does, with conversations in a
    closed loop: a later turn is released when the previous turn of its conversation has
    ended plus the think time (their arrival gap, `workload.next_turn_release`), and its
    prompt is that turn's prompt and actual output followed by the new message (the last
    prompt_len - previous prompt_len - previous output_len tokens of its trace prompt, at
    least one). Everything else (and every turn with `closed_loop=False`) arrives at its
    trace time with its trace prompt."""
    by_turn = {(r.conversation, r.turn): r for r in t.requests if r.conversation is not None}
    trace = {r.id: r for r in t.requests}
    order = {r.id: k for k, r in enumerate(t.requests)}
    prev_of: dict[str, str] = {}  # a later turn -> the turn it waits for
    heap: list[tuple[float, int, str]] = []  # (release, trace order, id)
    for k, r in enumerate(t.requests):
        prev = by_turn.get((r.conversation, r.turn - 1)) if r.conversation is not None else None
        if closed_loop and prev is not None and r.turn > 0:
            prev_of[r.id] = prev.id
        else:
            heap.append((r.arrival, k, r.id))
    heapq.heapify(heap)
    waiting = {p: r for r, p in prev_of.items()}  # previous turn -> next turn, not released
    prompts: dict[str, list[int]] = {}  # id -> the prompt it was submitted with

    def release(base: float, now: float) -> float | None:
        for pid in [p for p in waiting if p in prompts]:
            done = engine.timelines[pid].finish_time
            if done is not None:
                nxt = trace[waiting.pop(pid)]
                at = workload.next_turn_release(trace[pid], done - base, nxt)
                heapq.heappush(heap, (at, order[nxt.id], nxt.id))
        while heap and heap[0][0] <= now:
            at, _, rid = heapq.heappop(heap)
            r, ids, pid = trace[rid], t.prompts[rid], prev_of.get(rid)
            if pid is not None:
                p = trace[pid]
                new = max(1, r.prompt_len - p.prompt_len - p.output_len)
                ids = prompts[pid] + engine.output(pid) + ids[-new:]
            prompts[rid] = ids
            _submitter(engine, r, ids, max_output_len)(base + at)
        if waiting and not (heap or engine.has_work or any(p in prompts for p in waiting)):
            raise AssertionError(f"turns wait on turns never submitted: {sorted(waiting)}")
        return heap[0][0] if heap else None

    multihost.serve_loop(engine, release, lambda: bool(heap or waiting))


def _submitter(engine: Engine, req: workload.TraceRequest, ids: list[int], max_output_len: int):
    cap = replay_cap(len(ids), req.output_len, max_output_len, engine.config.max_seq_len)
    params = SamplingParams(max_new_tokens=cap, seed=0)

    def submit(arrival: float) -> str:
        return engine.submit(
            ids,
            params,
            request_id=req.id,
            arrival=arrival,
            output_len=req.output_len,
            client=req.client,
            stop_at_output_len=True,
            conversation=req.conversation,
            priority=req.priority,
        )

    return submit
