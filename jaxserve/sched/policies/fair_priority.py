"""fair_priority: token-level preemptive fair scheduling (FastSwitch's setting).

    every `rerank_every` iterations: rank the live requests by their client's attained
        service (`fair.py`: weighted, lifted on return), then arrival; requests arriving
        between re-rankings queue behind the ranked ones in arrival order
    every iteration: the batch is rebuilt from the top of that ranking by the preemptive
        planner (`priority.py`): requests that fall out are preempted between tokens, and
        when pages run short the lowest-ranked residents are swapped out or dropped
        (`SchedulerConfig.preemption`)

A client is active while it has any live request. Prompts are charged once, at the first
prefill; generated tokens as they are committed. Re-ranking less often trades fairness for
fewer context switches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.base import Policy
from jaxserve.sched.policies.fair import ServiceCounters
from jaxserve.sched.policies.priority import plan_by_priority
from jaxserve.sched.request import Request

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler


class FairPriority(Policy):
    name = "fair_priority"

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.counters = ServiceCounters(config)
        self.rank: dict[str, int] = {}  # request id -> place in the last ranking
        self.ranked_at: int | None = None  # scheduler iteration of the last ranking

    def on_add(self, sched: Scheduler, r: Request) -> None:
        active = {q.client for q in sched.live if q is not r}
        self.counters.refresh(active)
        if r.client not in active:
            self.counters.activate(r.client, active)

    def before_schedule(self, sched: Scheduler, now: float) -> None:
        live = sched.live
        self.counters.refresh(q.client for q in live)
        due = self.ranked_at is None or sched.iteration - self.ranked_at >= self.config.rerank_every
        if due:
            c = self.counters
            order = sorted(live, key=lambda q: (c[q.client], q.arrival, q.seq))
            self.rank = {q.id: i for i, q in enumerate(order)}
            self.ranked_at = sched.iteration

    def plan(self, sched: Scheduler, plan: Plan) -> None:
        n = len(self.rank)

        def key(q: Request) -> tuple[int, float, int]:
            i = self.rank.get(q.id)
            return (i, 0.0, 0) if i is not None else (n, q.arrival, q.seq)

        plan_by_priority(sched, plan, sorted(sched.live, key=key))
        for r in plan.prefill:
            if r.num_generated == 0:  # a first prefill, not a recompute
                self.counters.charge_input(r)

    def on_tokens(self, sched: Scheduler, r: Request, n: int) -> None:
        self.counters.charge_output(r, n)
