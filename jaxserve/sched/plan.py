"""What one iteration does: the scheduler's output and the executor's input.

    Plan(now)
      1. swap_out   copy these device pages to host (the scheduler already freed them)
      2. swap_in    copy each request's host KV into these NEW device pages
      3. prefill    compute KV for tokens[0:context_len], sample one token each
         decode     one token each (input: the last sampled token)
      events: drop, preempted, rejected

A plan never holds both swap_out and swap_in (no ping-pong), so swap_in never reuses a page
of the same plan's swap_out. A prefill or decode may be given a page that the same plan
swaps out: the executor must issue the swap-out reads before the step that writes it (in
JAX, dispatching the gather before the donated step call is enough).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxserve.sched.request import Request


@dataclass
class Plan:
    """One iteration's decisions. Lists are in priority / FCFS order."""

    prefill: list[Request] = field(default_factory=list)  # prompt (+ generated if recomputing)
    decode: list[Request] = field(default_factory=list)  # one token each
    swap_out: list[tuple[Request, list[int]]] = field(default_factory=list)  # pages to host, 1st
    swap_in: list[tuple[Request, list[int]]] = field(default_factory=list)  # host KV -> new pages
    drop: list[Request] = field(default_factory=list)  # KV discarded (pages already freed)
    preempted: list[Request] = field(default_factory=list)  # in the last batch, not in this one
    rejected: list[Request] = field(default_factory=list)  # rejected since the last plan
    now: float = 0.0  # the time `schedule` was called with
    prefill_lens: list[int] = field(default_factory=list)  # prefill tokens, set by `commit`

    @property
    def batch(self) -> list[Request]:
        """The requests that compute (and emit one token) this iteration."""
        return self.prefill + self.decode

    @property
    def batch_tokens(self) -> int:
        """Tokens computed this iteration (valid until `Scheduler.update`)."""
        return sum(r.context_len for r in self.prefill) + len(self.decode)

    @property
    def swap_out_pages(self) -> int:
        return sum(len(p) for _, p in self.swap_out)

    @property
    def swap_in_pages(self) -> int:
        return sum(len(p) for _, p in self.swap_in)

    @property
    def empty(self) -> bool:
        """No device work (no compute, no swaps). Events may still be present."""
        return not (self.prefill or self.decode or self.swap_out or self.swap_in)

    def summary(self) -> str:
        """Compact text for logs and tests: 'prefill=[a] decode=[b,c] out=[d] in=[] drop=[]'."""

        def ids(rs: list[Request]) -> str:
            return ",".join(r.id for r in rs)

        return (
            f"prefill=[{ids(self.prefill)}] decode=[{ids(self.decode)}] "
            f"out=[{ids([r for r, _ in self.swap_out])}] in=[{ids([r for r, _ in self.swap_in])}] "
            f"drop=[{ids(self.drop)}]"
        )
