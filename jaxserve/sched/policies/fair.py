"""Per-client service counters: the state the fair policies (vtc, fair_priority) share.

    charge   counter[c] += cost / weight(c), where cost is
               input_cost * prompt_len   once, when the request is first prefilled
               output_cost * n           for every n generated tokens
    lift     a client that becomes active (it had no active request) starts at
               max(counter[c], min over the other active clients' counters)
             or, when no other client is active, max(counter[c], last_left): the counter of
             the last client that stopped being active (the system was idle or underloaded)

So a client cannot bank service while idle and then starve the others on its return, and a
client is owed service in proportion to its weight. What "active" means is the policy's: for
vtc a client with requests waiting for admission (backlogged), for fair_priority a client
with any live request. Recomputing a dropped request's prompt is not charged: the client did
not ask for it twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.request import Request


class ServiceCounters:
    """Weighted attained service per client, with VTC's lift on (re)activation."""

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.counter: dict[str, float] = {}  # client -> weighted service charged so far
        self.last_left = 0.0  # counter of the last client that stopped being active
        self._active: set[str] = set()  # the active clients at the last `refresh`

    def __getitem__(self, client: str) -> float:
        return self.counter.get(client, 0.0)

    def refresh(self, active: Iterable[str]) -> None:
        """Tell the counters which clients are active now; those that left since the last
        call set `last_left` (the highest of them, when several left together)."""
        active = set(active)
        left = self._active - active
        if left:
            self.last_left = max(self[c] for c in left)
        self._active = active

    def activate(self, client: str, others: Iterable[str]) -> None:
        """`client` becomes active while `others` are (it is not among them): lift it."""
        others = [self[c] for c in others if c != client]
        floor = min(others) if others else self.last_left
        self.counter[client] = max(self[client], floor)
        self._active.add(client)

    def charge_input(self, r: Request) -> None:
        self._charge(r.client, self.config.input_cost * r.prompt_len)

    def charge_output(self, r: Request, n: int) -> None:
        self._charge(r.client, self.config.output_cost * n)

    def _charge(self, client: str, cost: float) -> None:
        self.counter[client] = self[client] + cost / self.config.weight(client)
