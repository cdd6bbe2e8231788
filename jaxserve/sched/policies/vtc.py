"""vtc: Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models").

    every iteration:
      1. every admitted (RUNNING) request decodes; it is charged output_cost a token
      2. while the batch has room: k = the backlogged client with the smallest counter
         (ties: the earliest waiting request); admit k's earliest waiting request if pages
         for its prompt + max_new_tokens are free, charging input_cost * prompt_len; else stop
    a request from a client with nothing waiting lifts that client's counter (`fair.py`)

A client is backlogged while it has WAITING requests. Admission reserves pages for the whole
request, as fcfs does, so nothing is ever preempted and a client's admitted requests can add
at most M = usable pages * page_size tokens of output charge. Counters are weighted service
(cost / weight, `SchedulerConfig.client_weights`).

The guarantee (derived for this implementation; the paper's Theorem 4.1 has the same shape):
while clients f and g are both backlogged, |c_f - c_g| <= U = (input_cost * L + output_cost *
M) / min weight, L the longest prompt. A client is admitted only as the argmin, after which
its counter grows by at most one prompt's input charge and its admitted requests' output;
the smallest backlogged counter never decreases while anyone is backlogged (a joining client
is lifted to it); so over any interval both are backlogged their weighted services differ by
at most 2U (`vtc_bound`). The paper states 2 * max(w_p L, w_q M) for its own accounting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.base import Policy, arrival_order
from jaxserve.sched.policies.fair import ServiceCounters
from jaxserve.sched.request import Request

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler


def vtc_bound(config: SchedulerConfig, max_prompt_len: int, weights=(1.0,)) -> float:
    """2U: the most the weighted services of two backlogged clients can differ over an
    interval (module docstring). `weights`: the clients' weights (the smallest counts)."""
    m = config.usable_pages * config.page_size
    u = (config.input_cost * max_prompt_len + config.output_cost * m) / min(weights)
    return 2 * u


class VTC(Policy):
    name = "vtc"
    preemptive = False

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.counters = ServiceCounters(config)

    def on_add(self, sched: Scheduler, r: Request) -> None:
        backlogged = {q.client for q in sched.waiting if q is not r}
        self.counters.refresh(backlogged)
        if r.client not in backlogged:
            self.counters.activate(r.client, backlogged)

    def plan(self, sched: Scheduler, plan: Plan) -> None:
        for r in sorted(sched.running, key=arrival_order):  # admitted: all run every iteration
            sched.run(r, plan)
        queues: dict[str, list[Request]] = {}
        for r in sorted(sched.waiting, key=arrival_order, reverse=True):  # pop() = earliest
            queues.setdefault(r.client, []).append(r)
        c = self.counters
        while queues and len(plan.batch) < self.config.max_batch:
            k = min(queues, key=lambda k: (c[k], arrival_order(queues[k][-1])))
            r = queues[k][-1]
            need = sched.max_pages(r)
            if need > sched.allocator.num_free:
                break  # strict: the client owed service is not skipped
            queues[k].pop()
            if not queues[k]:
                del queues[k]
            sched.run(r, plan, pages=need)
            c.charge_input(r)
        c.refresh(queues)

    def on_tokens(self, sched: Scheduler, r: Request, n: int) -> None:
        self.counters.charge_output(r, n)
