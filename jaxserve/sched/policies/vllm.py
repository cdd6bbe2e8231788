"""vllm: FCFS with on-demand pages and preemption of the newest request under memory pressure.

    1. running requests, oldest first, each get the page their next token needs; when none
       is free, preempt the NEWEST running request (swap or recompute per
       `config.preemption`), repeatedly, down to the request itself
    2. only if nothing was preempted this iteration: resume preempted requests (SWAPPED:
       swap in, DROPPED: re-prefill) in arrival order, stopping at the first that does not fit
    3. only if no preempted request is left waiting: admit new requests in arrival order
       with pages for their prompt, stopping at the first that does not fit

This is vLLM's (v0) default scheduler: a request is preempted only when memory runs out,
never for priority, and an iteration that preempts resumes nothing (no swap ping-pong).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.base import Policy, arrival_order
from jaxserve.sched.request import Request, State

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler


class VLLM(Policy):
    name = "vllm"
    preemptive = False  # no priority preemption; memory preemption only

    def plan(self, sched: Scheduler, plan: Plan) -> None:
        alloc = sched.allocator
        running = sorted(sched.running, key=arrival_order)
        while running:
            r = running.pop(0)
            while sched.step_pages(r) - len(r.pages) > alloc.num_free:
                if running:
                    sched.evict(running.pop(), plan)  # the newest
                else:
                    sched.evict(r, plan)
                    break
            else:
                sched.run(r, plan)
        if plan.swap_out or plan.drop:
            return
        preempted = sorted(sched.swapped + sched.dropped, key=arrival_order)
        for r in preempted:
            if len(plan.batch) >= self.config.max_batch or not self._fits(sched, r):
                return
            sched.run(r, plan)
        for r in sorted(sched.waiting, key=arrival_order):
            if len(plan.batch) >= self.config.max_batch or not self._fits(sched, r):
                return
            sched.run(r, plan)

    @staticmethod
    def _fits(sched: Scheduler, r: Request) -> bool:
        extra = sched.step_pages(r) - (len(r.pages) if r.state is State.RUNNING else 0)
        return extra <= sched.allocator.num_free
