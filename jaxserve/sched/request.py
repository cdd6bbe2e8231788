"""A request's life in the scheduler: its lengths, its state, and the pages it holds.

    add       --fits------------------> WAITING   (no KV)
    add       --can never fit---------> REJECTED
    WAITING   --prefill---------------> RUNNING   (KV on device; in the batch or not)
    RUNNING   --swap out--------------> SWAPPED   (KV on host)
    SWAPPED   --swap in (new pages)---> RUNNING
    RUNNING   --drop------------------> DROPPED   (KV discarded)
    DROPPED   --prefill (recompute)---> RUNNING
    any live  --finish / cancel-------> FINISHED

Token accounting (the convention every executor follows):

- A prefill computes the KV of the prompt and samples the first token. That token's KV is
  written by the *next* step (the decode that takes it as input).
- So after a step, ``kv_len = prompt_len + num_generated - 1`` tokens have KV (0 before the
  first step), and the next step needs KV for ``context_len = prompt_len + num_generated``
  tokens: pages for ``context_len`` tokens must be owned before the step runs.
- A recompute (a DROPPED request resuming) is a prefill over all ``context_len`` tokens
  (prompt followed by the ``num_generated`` tokens already emitted); it samples the next token,
  just as a decode would have.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


def pages_for(tokens: int, page_size: int) -> int:
    """Pages that hold `tokens` tokens (ceil division)."""
    return -(-tokens // page_size)


class State(enum.Enum):
    WAITING = "waiting"  # not started, no KV anywhere
    RUNNING = "running"  # KV on device (resident), schedulable; not necessarily in the batch
    SWAPPED = "swapped"  # preempted, KV on host
    DROPPED = "dropped"  # preempted, KV discarded: prompt + generated tokens are recomputed
    FINISHED = "finished"  # done (stop token, length limit, or cancelled)
    REJECTED = "rejected"  # can never fit (pool or max_seq_len); never ran


LIVE_STATES = (State.WAITING, State.RUNNING, State.SWAPPED, State.DROPPED)


@dataclass(eq=False)
class Request:
    """One generation request. Identity is the object (and its unique `id`)."""

    id: str  # unique within a scheduler
    arrival: float  # seconds, the time the request entered the system
    prompt_len: int  # prompt tokens (>= 1)
    max_new_tokens: int  # the most tokens to generate (>= 1)
    output_len: int | None = None  # true output length: only the `srpt` oracle and simulators
    client: str = "default"  # tenant / client, for fairness policies and metrics
    priority: int = 0  # the client's rank, lower first: the `priority` policy orders by it
    # Mutable state, owned by the scheduler.
    state: State = State.WAITING  # where the request is in its life (see the module docstring)
    num_generated: int = 0  # tokens emitted so far
    pages: list[int] = field(default_factory=list)  # device block table (page ids, in order)
    host_pages: int = 0  # pages of KV held on host (SWAPPED only)
    queue: int = 0  # MLFQ level (0 = highest priority)
    quantum_used: float = 0.0  # seconds run in the current MLFQ level
    last_run: float = math.nan  # time it last ran (or arrived, until it has run): starvation
    preemptions: int = 0  # times it was in a batch and then left out of the next one
    first_token_time: float | None = None  # time the step that emitted token 1 ended
    finish_time: float | None = None  # time it finished (None if rejected or cancelled early)
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "rejected: ..."
    cancelled: bool = False  # finished by `Scheduler.cancel`
    seq: int = 0  # order of `Scheduler.add` calls: the last tie-breaker everywhere
    entered_queue: int = 0  # scheduler sequence number of entering the current MLFQ level

    def __post_init__(self) -> None:
        if math.isnan(self.last_run):
            self.last_run = self.arrival

    @property
    def context_len(self) -> int:
        """Tokens the NEXT step needs KV (and pages) for: prompt + generated."""
        return self.prompt_len + self.num_generated

    @property
    def kv_len(self) -> int:
        """Tokens whose KV the steps so far have written (the last sampled token has none)."""
        return self.prompt_len + self.num_generated - 1 if self.num_generated else 0

    @property
    def max_len(self) -> int:
        """prompt + max_new_tokens: the (one-token conservative) most context it can need."""
        return self.prompt_len + self.max_new_tokens

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def pages_needed(self, page_size: int, extra_tokens: int = 0) -> int:
        """Pages for `context_len + extra_tokens` tokens (what the next step must own)."""
        return pages_for(self.context_len + extra_tokens, page_size)

    def __repr__(self) -> str:
        return (
            f"Request({self.id!r}, {self.state.name}, prompt={self.prompt_len}, "
            f"gen={self.num_generated}/{self.max_new_tokens}, q={self.queue}, "
            f"pages={len(self.pages)}, host={self.host_pages})"
        )
