"""priority: each request's own `priority` (lower first), ties by arrival; token-level preemptive.

    every iteration: rank the live requests by (priority, arrival, add order) and rebuild the
        batch from the top of that ranking with the preemptive planner (`priority.py`)
    a request that falls out of the top max_batch is preempted between tokens (its KV stays
        on device); when pages run short the lowest-ranked residents are swapped out or
        dropped (`SchedulerConfig.preemption`), as few as the better request needs

So a higher-priority arrival takes a batch slot from the lowest-priority running request at
once, and pages from it when memory is short; among equal priorities it is FCFS and nobody
is displaced by a later arrival. This is vLLM's priority scheduling at token granularity. The
priority is the client's (`Engine.submit(priority=...)`, the HTTP `priority` field); with
every request at the same priority the policy is preemptive FCFS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.base import Policy
from jaxserve.sched.policies.priority import plan_by_priority
from jaxserve.sched.request import Request

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler


def priority_order(r: Request) -> tuple[int, float, int]:
    """Rank key: the request's priority, then arrival, then add order."""
    return (r.priority, r.arrival, r.seq)


class RequestPriority(Policy):
    name = "priority"

    def plan(self, sched: Scheduler, plan: Plan) -> None:
        plan_by_priority(sched, plan, sorted(sched.live, key=priority_order))
