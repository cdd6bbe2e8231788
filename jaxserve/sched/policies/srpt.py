"""srpt: shortest remaining processing time, preemptive. AN ORACLE, NOT A DEPLOYABLE POLICY.

It reads each request's true `output_len` (which a server cannot know) and ranks by tokens
left to emit, min(output_len, max_new_tokens) - num_generated (max_new_tokens if unknown).
Use it as an upper bound on what length-aware scheduling could gain. Memory is handled by
the same proactive KV manager as mlfq (`priority.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.base import Policy
from jaxserve.sched.policies.priority import plan_by_priority
from jaxserve.sched.request import Request

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler


def remaining_tokens(r: Request) -> int:
    total = r.max_new_tokens if r.output_len is None else min(r.output_len, r.max_new_tokens)
    return total - r.num_generated


class SRPT(Policy):
    name = "srpt"

    def plan(self, sched: Scheduler, plan: Plan) -> None:
        order = sorted(sched.live, key=lambda r: (remaining_tokens(r), r.arrival, r.seq))
        plan_by_priority(sched, plan, order)
