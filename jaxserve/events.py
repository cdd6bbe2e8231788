"""What the engine records and reports of each request: its events and its timeline."""

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
    # "predict": a drop's recovery, "pause") and its cost, seconds from the dispatch of the
    # iteration that brought it back to the read of its token (absent until read)
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
