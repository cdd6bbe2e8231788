"""fcfs (Orca): iteration-level batching in arrival order, run to completion, never preempts.

A request is admitted only when pages for prompt + max_new_tokens are free, and it gets them
all at admission; so a running request never waits for a page and nothing is preempted.
Admission is strictly in order: a request that does not fit blocks the ones behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.base import Policy, arrival_order

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler


class FCFS(Policy):
    name = "fcfs"
    preemptive = False

    def plan(self, sched: Scheduler, plan: Plan) -> None:
        for r in sorted(sched.running, key=arrival_order):  # admitted: all run every iteration
            sched.run(r, plan)
        for r in sorted(sched.waiting, key=arrival_order):
            need = sched.max_pages(r)
            if len(plan.batch) >= self.config.max_batch or need > sched.allocator.num_free:
                break
            sched.run(r, plan, pages=need)
