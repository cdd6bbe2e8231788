"""Scheduling policies, registered by name.

    fcfs            Orca: iteration-level FCFS, reserve all pages at admission, no preemption
    vllm            FCFS, pages on demand, preempt the newest under memory pressure
    mlfq            token-level MLFQ, quantum q0 * 2**i, demotion, starvation guard
    skip_join_mlfq  FastServe: MLFQ whose new jobs skip queues their prefill overruns
    srpt            oracle (knows output_len): shortest remaining first; an upper bound
    vtc             Virtual Token Counter: admit from the least-served backlogged client
    fair_priority   FastSwitch: re-rank by client service every N iterations, preempt
    priority        each request's own priority (lower first), then arrival; preemptive

mlfq, skip_join_mlfq, srpt, fair_priority and priority share the preemptive planner and proactive KV
manager of `priority.py`.
"""

from __future__ import annotations

from jaxserve.sched.policies.base import Policy
from jaxserve.sched.policies.fair_priority import FairPriority
from jaxserve.sched.policies.fcfs import FCFS
from jaxserve.sched.policies.mlfq import MLFQ
from jaxserve.sched.policies.request_priority import RequestPriority
from jaxserve.sched.policies.skip_join import SkipJoinMLFQ, skip_join_queue
from jaxserve.sched.policies.srpt import SRPT
from jaxserve.sched.policies.vllm import VLLM
from jaxserve.sched.policies.vtc import VTC, vtc_bound

POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (FCFS, VLLM, MLFQ, SkipJoinMLFQ, SRPT, VTC, FairPriority, RequestPriority)
}


def get_policy(name: str) -> type[Policy]:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None


__all__ = ["POLICIES", "Policy", "get_policy", "skip_join_queue", "vtc_bound"]
