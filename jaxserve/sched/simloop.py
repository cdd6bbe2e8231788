"""A tiny deterministic discrete-event loop: run a scheduler to completion on a cost model.

    t = 0
    repeat: add requests with arrival <= t
            plan = schedule(t)
            no device work: jump to the next arrival (or stop when done)
            t += cost.iteration_time(plan); update(t, every batch request emits 1 token,
                 finished when it reaches output_len)

For tests and quick policy comparisons; `jaxserve.sim` (richer cost models) is built on the
same contract. Requests need `output_len` (the simulator's ground truth; None means it runs
to max_new_tokens). The loop mutates the Request objects it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jaxserve.sched.plan import Plan
from jaxserve.sched.request import Request, State
from jaxserve.sched.scheduler import Scheduler, StepResult


@dataclass(frozen=True)
class LinearCost:
    """Iteration time = a + b * decode rows + b_prefill * prefill tokens
    + c * context tokens the decode rows attend to + swapped bytes / swap_bandwidth."""

    a: float = 0.01  # seconds per iteration (weights read, launch overhead)
    b: float = 1e-4  # seconds per decode row (one token computed)
    swap_bandwidth: float | None = None  # bytes/s; None: swaps cost nothing
    kv_bytes_per_page: int = 0  # bytes per page moved by a swap
    b_prefill: float | None = None  # seconds per prefill token; None: b
    c: float = 0.0  # seconds per context token a decode row reads (its KV cache)

    def iteration_time(self, plan: Plan) -> float:
        if not plan.batch:
            t = 0.0
        else:
            prefill_tokens = sum(r.context_len for r in plan.prefill)
            per_prefill = self.b if self.b_prefill is None else self.b_prefill
            t = self.a + self.b * len(plan.decode) + per_prefill * prefill_tokens
            t += self.c * sum(r.context_len for r in plan.decode)
        if self.swap_bandwidth:
            pages = plan.swap_in_pages + plan.swap_out_pages
            t += pages * self.kv_bytes_per_page / self.swap_bandwidth
        return t


@dataclass
class SimResult:
    requests: list[Request]  # every request, in arrival order
    time: float  # when the last iteration ended
    iterations: int  # plans executed
    finished_events: list[str] = field(default_factory=list)  # ids, in the order they finished
    rejected_events: list[str] = field(default_factory=list)  # ids, as plans reported them

    def jct(self) -> dict[str, float]:
        """Completion time (finish - arrival) of every finished request."""
        return {
            r.id: r.finish_time - r.arrival
            for r in self.requests
            if r.state is State.FINISHED and r.finish_time is not None
        }

    def mean_jct(self) -> float:
        j = self.jct()
        return sum(j.values()) / len(j) if j else float("nan")


def simulate(
    sched: Scheduler,
    requests: Sequence[Request],
    cost: LinearCost | Callable[[Plan], float],
    *,
    max_iterations: int = 1_000_000,
    on_step: Callable[[Scheduler, Plan], None] | None = None,
) -> SimResult:
    """Run `sched` until every request ended. `on_step(sched, plan)` is called after each
    `schedule` (tests check invariants there). Raises if the scheduler stalls with work left
    and nothing arriving, or exceeds `max_iterations`."""
    iteration_time = cost.iteration_time if isinstance(cost, LinearCost) else cost
    pending = sorted(requests, key=lambda r: (r.arrival, r.id))
    result = SimResult(requests=list(pending), time=0.0, iterations=0)
    t, i = 0.0, 0
    while True:
        while i < len(pending) and pending[i].arrival <= t:
            sched.add(pending[i])
            i += 1
        plan = sched.schedule(t)
        if on_step is not None:
            on_step(sched, plan)
        result.rejected_events += [r.id for r in plan.rejected]
        if plan.empty:
            if i < len(pending):
                t = max(t, pending[i].arrival)
                continue
            if sched.done:
                break
            raise RuntimeError(f"scheduler stalled at t={t} with {sched.live}")
        result.iterations += 1
        if result.iterations > max_iterations:
            raise RuntimeError(f"no completion after {max_iterations} iterations")
        t += iteration_time(plan)
        finished = set()
        for r in plan.batch:
            target = r.max_new_tokens if r.output_len is None else r.output_len
            if r.num_generated + 1 >= target:
                finished.add(r.id)
        done = sched.update(t, StepResult(iteration_time=t - plan.now, finished=finished))
        result.finished_events += [r.id for r in done]
    result.time = t
    return result
