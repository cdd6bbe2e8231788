"""What the engine records and reports of each request: its events and its timeline, and
the preemption figures results.json carries (`preemption_record`, `preemption_summary`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class Event:
    kind: str  # "token" | "finish" | "preempt" | "resume" | "reject"
    request_id: str
    time: float  # engine clock, seconds
    token: int | None = None  # for "token"
    detail: str | None = None  # finish reason ("stop", "length", "cancelled") or preemption kind
    # the request's `Timeline`, attached to a terminal event by whoever then releases it from
    # the engine (`Engine.release`), so readers of the event still have it
    record: Timeline | None = None


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
    # each preemption: when (engine clock) and how ("swap", "drop", "pause": left resident)
    preempt_times: list[float] = dataclasses.field(default_factory=list)
    preempt_kinds: list[str] = dataclasses.field(default_factory=list)
    # each resume after one: when it computed again, how ("swap": swapped in, "recompute",
    # "predict": a drop's recovery, "pause") and its cost: the seconds of the iteration that
    # brought it back (swap-in or re-prefill and its step), measured as the engine measures
    # every iteration, from the later of its dispatch and the previous read to its read
    resume_times: list[float] = dataclasses.field(default_factory=list)
    resume_kinds: list[str] = dataclasses.field(default_factory=list)
    resume_costs: list[float] = dataclasses.field(default_factory=list)


class UnknownRequestError(KeyError):
    """An id the engine was never given (`cancel`, `stream`, `output`)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def token_ids(rid: str, prompt_ids: Sequence[int]) -> list[int]:
    """The prompt as Python ints; floats, strings and bools are a `TypeError`, not truncated."""
    ids = []
    for t in prompt_ids:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise TypeError(
                f"request {rid!r}: token ids must be integers, got {type(t).__name__} {t!r}"
            )
        ids.append(int(t))
    return ids


def preemption_record(tl: Timeline) -> dict:
    """A request's preemptions and resumes, for its record in results.json: the times (engine
    clock) and kinds of each, each resume's cost, and each preemption's time until the
    request computed again (`preempted_for`; a preemption not resumed has none)."""
    return {
        "preempt_times": list(tl.preempt_times),
        "preempt_kinds": list(tl.preempt_kinds),
        "resume_times": list(tl.resume_times),
        "resume_kinds": list(tl.resume_kinds),
        "resume_costs": list(tl.resume_costs),
        "preempted_for": [r - p for p, r in zip(tl.preempt_times, tl.resume_times)],
    }


def preemption_summary(timelines: Sequence[Timeline]) -> dict:
    """Over requests: how long preempted requests waited to compute again (preempt ->
    resume, seconds) and what resuming cost, overall and by kind of resume."""

    def stats(xs: list[float]) -> dict:
        if not xs:
            return {"n": 0, "mean": None, "p50": None, "p99": None, "max": None}
        a = np.asarray(xs, float)
        return {
            "n": len(xs),
            "mean": float(a.mean()),
            "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)),
            "max": float(a.max()),
        }

    waits, costs, by_kind = [], [], {}
    for tl in timelines:
        for p, r, kind in zip(tl.preempt_times, tl.resume_times, tl.resume_kinds):
            waits.append(r - p)
            by_kind.setdefault(kind, ([], []))[0].append(r - p)
        for kind, c in zip(tl.resume_kinds, tl.resume_costs):
            costs.append(c)
            by_kind.setdefault(kind, ([], []))[1].append(c)
    return {
        "preempt_to_resume": stats(waits),
        "resume_cost": stats(costs),
        "resumes_by_kind": {
            k: {"preempt_to_resume": stats(w), "resume_cost": stats(c)}
            for k, (w, c) in sorted(by_kind.items())
        },
    }
