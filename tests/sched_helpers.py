"""Helpers of the scheduler tests (model-free, exact, fast).

Hand-worked schedules are written out in each test's docstring as one line per iteration,
`iter k (t=...): <plan>`, and asserted with `Plan.summary()`. Helpers:

    step(s, t, dt)   schedule at t, then update at t + dt with every batch request emitting
                     one token (StepResult(dt)); returns the plan
"""

from __future__ import annotations

from jaxserve.sched import Plan, Request, Scheduler, SchedulerConfig, StepResult


def config(**kw) -> SchedulerConfig:
    # the hand-worked schedules of the tests charge every batch member the whole iteration
    fields = dict(
        max_batch=4, num_pages=64, page_size=4, max_seq_len=4096, quantum_charge="iteration"
    )
    fields.update(kw)
    return SchedulerConfig(**fields)


def req(rid: str, prompt: int, max_new: int = 100, arrival: float = 0.0, output_len=None):
    return Request(
        rid, arrival=arrival, prompt_len=prompt, max_new_tokens=max_new, output_len=output_len
    )


def step(s: Scheduler, t: float, dt: float = 0.25, finished=()) -> Plan:
    plan = s.schedule(t)
    s.update(t + dt, StepResult(iteration_time=dt, finished=set(finished)))
    s.check_invariants()
    return plan


def ids(rs) -> list[str]:
    return [r.id for r in rs]
