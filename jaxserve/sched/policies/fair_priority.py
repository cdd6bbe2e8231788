"""fair_priority: token-level preemptive fair scheduling (FastSwitch's setting).

    every `rerank_every` iterations: rank the live requests by projected client service
        (`fair.py`: weighted, lifted on return). Like fair queueing over batch slots, the
        ranking is built one place at a time: the next place goes to the head request (its
        client's earliest) of the client whose projection is lowest, and that projection
        grows by what the request would be charged in one re-rank period (its prompt if not
        yet prefilled, plus output_cost * the tokens a batch slot emits per period, divided
        by the weight). Clients with close counters share the batch instead of the lowest
        taking every slot and handing all of them over at the next re-ranking.
        Hysteresis: a request that ran in the last batch competes as if its client's
        projection were `rerank_margin` periods of its own service lower, so it is not
        preempted for a client that is behind by less than that.
        Requests arriving between re-rankings queue behind the ranked ones in arrival order.
    every iteration: the batch is rebuilt from the top of that ranking by the preemptive
        planner (`priority.py`): requests that fall out are preempted between tokens, and
        when pages run short the lowest-ranked residents are swapped out or dropped
        (`SchedulerConfig.preemption`)

A client is active while it has any live request. Prompts are charged once, at the first
prefill; generated tokens as they are committed. Re-ranking less often, or a larger margin,
trades fairness for fewer context switches; every preemption that a re-ranking causes leaves
a gap between two tokens of the preempted request (its TBT).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.base import Policy, arrival_order
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
        self.last_batch: set[str] = set()  # ids of the last plan's batch
        self.tokens = 0  # tokens credited to batch rows so far ...
        self.rows = 0  # ... over this many rows: tokens a batch slot emits per iteration

    def on_add(self, sched: Scheduler, r: Request) -> None:
        active = {q.client for q in sched.live if q is not r}
        self.counters.refresh(active)
        if r.client not in active:
            self.counters.activate(r.client, active)

    def period_tokens(self) -> float:
        """Tokens one batch slot emits in a re-rank period (1 a step until measured)."""
        per_step = self.tokens / self.rows if self.rows else 1.0
        return self.config.rerank_every * per_step

    def ranking(self, live: list[Request]) -> list[Request]:
        """Live requests, best first (module docstring)."""
        cfg, c = self.config, self.counters
        period = self.period_tokens()
        queues: dict[str, list[Request]] = {}
        for q in sorted(live, key=arrival_order, reverse=True):  # pop() = earliest
            queues.setdefault(q.client, []).append(q)
        proj = {k: c[k] for k in queues}

        def entry(k: str) -> tuple[float, float, int, str]:
            head = queues[k][-1]
            key = proj[k]
            if head.id in self.last_batch:
                key -= cfg.rerank_margin * cfg.output_cost * period / cfg.weight(k)
            return (key, head.arrival, head.seq, k)

        heap = [entry(k) for k in queues]
        heapq.heapify(heap)
        order = []
        while heap:
            k = heapq.heappop(heap)[3]
            r = queues[k].pop()
            order.append(r)
            tokens = min(period, r.max_new_tokens - r.num_generated)
            charge = cfg.output_cost * tokens
            if r.num_generated == 0:
                charge += cfg.input_cost * r.prompt_len
            proj[k] += charge / cfg.weight(k)
            if queues[k]:
                heapq.heappush(heap, entry(k))
        return order

    def before_schedule(self, sched: Scheduler, now: float) -> None:
        live = sched.live
        self.counters.refresh(q.client for q in live)
        due = self.ranked_at is None or sched.iteration - self.ranked_at >= self.config.rerank_every
        if due:
            self.rank = {q.id: i for i, q in enumerate(self.ranking(live))}
            self.ranked_at = sched.iteration

    def plan(self, sched: Scheduler, plan: Plan) -> None:
        n = len(self.rank)

        def key(q: Request) -> tuple[int, float, int]:
            i = self.rank.get(q.id)
            return (i, 0.0, 0) if i is not None else (n, q.arrival, q.seq)

        plan_by_priority(sched, plan, sorted(sched.live, key=key))
        self.last_batch = {r.id for r in plan.batch}
        for r in plan.prefill:
            if r.num_generated == 0:  # a first prefill, not a recompute
                self.counters.charge_input(r)

    def on_tokens(self, sched: Scheduler, r: Request, n: int) -> None:
        self.counters.charge_output(r, n)
        self.tokens += n
        self.rows += 1
