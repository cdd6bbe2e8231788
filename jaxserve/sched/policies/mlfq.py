"""mlfq: multi-level feedback queue at token granularity.

    queue i has quantum q0 * 2**i seconds; every job enters queue 0
    each iteration: the best jobs by (queue, entry into that queue) run, up to max_batch
    a job whose quantum_used reaches its queue's quantum moves down one queue (the last
    queue re-enters at its tail: round robin), quantum_used reset
    starvation guard (classic MLFQ priority boost; FastServe's too): every `promote_every`
    iterations, jobs that have not run for more than `starve_s` go back to queue 0

Jobs left out are preempted between tokens; their KV stays on device unless the proactive
KV manager (`priority.py`) moves it. `skip_join.py` changes only where a job enters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.base import Policy
from jaxserve.sched.policies.priority import plan_by_priority
from jaxserve.sched.request import Request

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler

# A quantum counts as used up within this relative slack (sums of float iteration times).
_QUANTUM_RTOL = 1e-9


def mlfq_order(r: Request) -> tuple[int, int]:
    """Priority key: lower queue first, then earlier entry into it."""
    return (r.queue, r.entered_queue)


class MLFQ(Policy):
    name = "mlfq"

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self._last_promotion = 0  # iteration of the last starvation check

    def entry_queue(self, sched: Scheduler, r: Request) -> int:
        return 0

    def on_add(self, sched: Scheduler, r: Request) -> None:
        r.queue = self.entry_queue(sched, r)
        r.quantum_used = 0.0

    def before_schedule(self, sched: Scheduler, now: float) -> None:
        every = self.config.promote_every
        if every <= 0 or sched.iteration - self._last_promotion < every:
            return
        self._last_promotion = sched.iteration
        for r in sorted(sched.live, key=mlfq_order):  # keeps their relative order
            if r.queue > 0 and now - r.last_run > self.config.starve_s:
                self._enter(sched, r, 0)

    def plan(self, sched: Scheduler, plan: Plan) -> None:
        plan_by_priority(sched, plan, sorted(sched.live, key=mlfq_order))

    def on_step(self, sched: Scheduler, r: Request, seconds: float) -> None:
        quantum = self.config.quantum(r.queue)
        if r.quantum_used >= quantum * (1 - _QUANTUM_RTOL):
            self._enter(sched, r, min(r.queue + 1, self.config.num_queues - 1))

    @staticmethod
    def _enter(sched: Scheduler, r: Request, queue: int) -> None:
        r.queue = queue
        r.quantum_used = 0.0
        r.entered_queue = sched.next_seq()
