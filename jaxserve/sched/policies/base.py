"""The policy interface: the hooks the scheduler calls, and nothing else.

add        -> on_add(sched, r)            e.g. choose the MLFQ queue
schedule   -> before_schedule(sched, now) e.g. starvation promotion
              plan(sched, plan)           choose the batch, evict, prefetch (via sched)
commit     -> on_tokens(sched, r, n)      e.g. charge the client n output tokens (vtc)
update     -> on_step(sched, r, seconds)  e.g. charge the quantum, demote
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.plan import Plan
from jaxserve.sched.request import Request

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler


def arrival_order(r: Request) -> tuple[float, int]:
    """FCFS key: arrival time, then add order."""
    return (r.arrival, r.seq)


class Policy:
    """Base policy. Subclasses set `name` and implement `plan`."""

    name: ClassVar[str] = ""  # registry name
    preemptive: ClassVar[bool] = True  # may leave a running request out of the next batch

    def __init__(self, config: SchedulerConfig):
        self.config = config

    def on_add(self, sched: Scheduler, r: Request) -> None:
        """A request arrived (after rejection checks)."""

    def before_schedule(self, sched: Scheduler, now: float) -> None:
        """Called first in every `schedule`."""

    def plan(self, sched: Scheduler, plan: Plan) -> None:
        """Fill `plan` using the scheduler's primitives (`run`, `evict`, `swap_in`)."""
        raise NotImplementedError

    def on_step(self, sched: Scheduler, r: Request, seconds: float) -> None:
        """`r` ran one step of `seconds` and did not finish."""

    def on_tokens(self, sched: Scheduler, r: Request, n: int) -> None:
        """`r` was credited `n` generated tokens (every batch request, finishing or not)."""
