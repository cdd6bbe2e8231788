"""The load client: replay a trace over HTTP, streaming, timed at the client.

    trace (workload.make_workload) + prompt ids (serve_trace.prompt_ids_for, same seed)
      -> at each arrival: POST /v1/completions {prompt: ids, stream: true, ...}
      -> chunk receive times -> metrics.RequestRecord -> metrics.summarize (same schema as
         experiments.serve)

Requests are sent as `experiments.serve` submits them in-process: greedy, the same token ids,
`max_tokens` = `workload.replay_cap(...)`, ending after the trace's output length as if at EOS
(`trace_output_len`, `ignore_eos`). Times are seconds from the start of the replay; a request's
latency counts from its scheduled arrival, whenever the client managed to send it.

With `details`, the server returns its record of each request (token times on its monotonic
clock, preemptions, swapped bytes): the records then carry the server's preemption and swap
figures, and `overhead` holds, per token, client receipt minus engine emission, which is
meaningful when client and server share a host (one monotonic clock).

Conversations (trace requests with `conversation` and `turn`) are sent with their
conversation id (made unique to the replay), so a server with multi-turn reuse starts a turn
from its previous turn's kept KV (usage.prompt_tokens_details.cached_tokens). With
`closed_loop`, as `serve_trace.replay_trace` replays them in-process, a later turn is sent when the
previous turn of its conversation has ended plus the think time (`workload.next_turn_release`,
the turn's latency counting from then), and its prompt is the previous turn's prompt and
output ids followed by the new message (the last prompt_len - previous prompt_len - previous
output_len ids of its trace prompt, at least one); `turn_cap(request, prompt_len)` gives its
max_tokens. A previous turn that failed leaves the next one its trace prompt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from jaxserve import metrics, workload


@dataclasses.dataclass
class Replayed:
    records: list[metrics.RequestRecord]  # one per trace request, in trace order
    overhead: list[float]  # per streamed token: client receipt - engine emission (s)
    statuses: dict[int, int]  # HTTP status -> count
    wall_seconds: float  # first send to last response
    ttft_parts: list[tuple[float, float, float, float]]  # per request with details, seconds:
    # (send - scheduled arrival, engine submit - send, engine's first token - submit,
    #  client receipt - engine's first token): the TTFT at the client, in four parts
    cached_tokens: dict[str, int] = dataclasses.field(default_factory=dict)  # id -> prompt
    # tokens the server started from kept KV (usage.prompt_tokens_details), conversation turns


def server_info(url: str, timeout: float = 30.0) -> dict[str, Any]:
    """The served model's card from GET /v1/models."""
    r = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=timeout)
    r.raise_for_status()
    return r.json()["data"][0]


async def _one(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    at: float,
    t0: float,
    out: dict[str, Any],
) -> None:
    """Send `body` at `at` seconds after `t0`; `out` gets what came back."""
    out["arrival"] = at
    delay = t0 + at - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    times: list[float] = []
    usage = details = reason = None
    status = 0
    out["sent"] = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as resp:
            status = resp.status_code
            if status == 200:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    payload = line[6:]
                    if payload == "[DONE]":
                        break
                    now = time.perf_counter()
                    chunk = json.loads(payload)
                    if chunk.get("choices"):
                        times.append(now)
                        reason = chunk["choices"][0].get("finish_reason") or reason
                    usage = chunk.get("usage") or usage
                    details = chunk.get("details") or details
            else:
                await resp.aread()
    except (httpx.HTTPError, json.JSONDecodeError):
        status = status or -1
    out.update(times=times, usage=usage, details=details, reason=reason, status=status)


def _record(
    req: workload.TraceRequest, prompt_len: int, got: dict[str, Any], t0: float
) -> metrics.RequestRecord:
    usage, details = got["usage"], got["details"]
    n = usage["completion_tokens"] if usage else len(got["times"])
    times = [t - t0 for t in got["times"][:n]]
    if got["status"] == 200 and got["reason"] in ("stop", "length") and len(times) == n:
        state = "finished"
    elif got["status"] in (400, 429):
        state = "rejected"
    else:
        state = "unfinished"
    rec = metrics.RequestRecord(
        id=req.id,
        arrival=got["arrival"],
        prompt_len=prompt_len,
        output_len=len(times),
        first_token_time=times[0] if times else None,
        finish_time=times[-1] if state == "finished" and times else None,
        token_times=times,
        client=req.client,
        state=state,
    )
    if details:
        rec.preemptions = details["preemptions"]
        rec.swapped_bytes = details["swapped_bytes"]
        rec.swap_time, rec.stall_time = details["swap_time"], details["stall_time"]
        rec.output_ids = list(details["token_ids"])
    return rec


async def replay_async(
    url: str,
    model: str,
    trace: Sequence[workload.TraceRequest],
    prompts: dict[str, list[int]],
    max_tokens: dict[str, int],
    *,
    details: bool = True,
    timeout: float = 600.0,
    closed_loop: bool = False,
    turn_cap: Callable[[workload.TraceRequest, int], int] | None = None,
) -> Replayed:
    endpoint = f"{url.rstrip('/')}/v1/completions"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    got: dict[str, dict[str, Any]] = {r.id: {} for r in trace}
    sent: dict[str, list[int]] = {}  # id -> the prompt it was sent with
    tag = uuid.uuid4().hex[:12]  # conversation ids unique to this replay
    by_turn = {(r.conversation, r.turn): r for r in trace if r.conversation is not None}
    prev_of: dict[str, workload.TraceRequest] = {}  # a later turn -> the turn it waits for
    if closed_loop:
        for r in trace:
            p = by_turn.get((r.conversation, r.turn - 1)) if r.conversation is not None else None
            if p is not None and r.turn > 0:
                prev_of[r.id] = p
    next_of = {p.id: r for r in trace for p in [prev_of.get(r.id)] if p is not None}

    def body(r: workload.TraceRequest) -> dict[str, Any]:
        ids, cap, p = prompts[r.id], max_tokens[r.id], prev_of.get(r.id)
        out = got[p.id].get("details") if p is not None else None
        if p is not None and out is not None and got[p.id]["status"] == 200:
            new = max(1, r.prompt_len - p.prompt_len - p.output_len)
            ids = sent[p.id] + list(out["token_ids"]) + ids[-new:]
            cap = turn_cap(r, len(ids)) if turn_cap is not None else cap
        sent[r.id] = ids
        b = {
            "model": model,
            "prompt": ids,
            "max_tokens": cap,
            "temperature": 0,
            "seed": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            "trace_output_len": min(r.output_len, cap),
            "user": r.client,
            "priority": r.priority,
            # a turn whose successor continues from its output ids needs them back
            "return_details": details or r.id in next_of,
        }
        if r.conversation is not None:
            b["conversation"] = f"{tag}-{r.conversation}"
        return b

    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=30.0), limits=limits
    ) as client:
        t0 = time.perf_counter()

        async def turns(r: workload.TraceRequest | None, at: float) -> None:
            while r is not None:  # a request, then the turns released after it
                await _one(client, endpoint, body(r), at, t0, got[r.id])
                nxt = next_of.get(r.id)
                if nxt is not None:
                    times = got[r.id]["times"]
                    end = (times[-1] if times else time.perf_counter()) - t0
                    at = workload.next_turn_release(r, end, nxt)
                r = nxt

        await asyncio.gather(*(turns(r, r.arrival) for r in trace if r.id not in prev_of))
        wall = time.perf_counter() - t0
    records, overhead, statuses, parts = [], [], {}, []
    cached_tokens: dict[str, int] = {}
    for r in trace:
        g = got[r.id]
        if not details:
            g["details"] = None
        statuses[g["status"]] = statuses.get(g["status"], 0) + 1
        records.append(_record(r, len(sent[r.id]), g, t0))
        cached = ((g["usage"] or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            cached_tokens[r.id] = cached
        d = g["details"]
        if d and g["times"]:
            overhead += [c - e for c, e in zip(g["times"], d["token_times"])]
            first = d["token_times"][0]
            sched = t0 + g["arrival"]
            parts.append(
                (
                    g["sent"] - sched,
                    d["arrival"] - g["sent"],
                    first - d["arrival"],
                    g["times"][0] - first,
                )
            )
    return Replayed(records, overhead, statuses, wall, parts, cached_tokens)


def replay(*args, **kwargs) -> Replayed:
    """`replay_async` from synchronous code."""
    return asyncio.run(replay_async(*args, **kwargs))
