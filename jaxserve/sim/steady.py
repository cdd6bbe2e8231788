"""Steady stretches: the decode iterations of one batch without re-planning or per-row work.

    _Loop.run: plan P (decode only, no pages moved; for MLFQ policies also a prefill) was
    read; rows that ended leave it (MLFQ: the rest go on where certain, as after a move)
      -> run_steady(loop, P.batch):
           limits  iterations before a row finishes by length or by its trace, before a
                   starvation check, before max_iterations (computed once)
           each iteration, only what can change something:
             stop    at the next arrival or cancellation, at a page growth the pool (less
                     the reserve) cannot give
             pages   rows crossing a page boundary grow, in plan order (the allocator's calls)
             clock   the device and host clocks as the loop moves them; cost of the rows at
                     context + j (`decode_step_time`: by the rows' context sums, memoised)
             quanta  every row charged the step as `Scheduler.complete` charges it (the same
                     float additions); a used-up quantum moves its row (MLFQ's `on_step`)
                     and the stretch goes on with the batch re-sorted only where `schedule`
                     is certain to plan exactly that: every live request in the batch, or a
                     full batch still ranked before every other live request
           then, once: tokens, token times, counters, quanta written back to the requests
      -> the iteration in which a row ends is still the same batch: its plan is made here
         (the scheduler's own `run` for each row) and handed to the loop, which runs it

Why the scheduler would plan P again: the policy's choice depends only on request keys that
a decode step leaves alone (srpt: only improves for the batch) and on free pages, which only
shrink meanwhile, so a request left out of P (it did not fit, or ranked after a full batch)
stays out. The run is the one that plans every iteration, token for token, page for page,
float for float (`tests/test_sim.py::test_fast_path_gives_the_same_run`).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import ge
from typing import TYPE_CHECKING

from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.mlfq import _QUANTUM_RTOL as QUANTUM_RTOL
from jaxserve.sched.policies.mlfq import MLFQ, mlfq_order
from jaxserve.sched.policies.vllm import VLLM
from jaxserve.sched.request import Request

if TYPE_CHECKING:
    from jaxserve.sim.loop import _Loop


def step_cost(loop: _Loop, rows: list[Request]) -> Callable[[int], float]:
    """`j -> seconds` of the one-step iteration of `rows` j tokens further on: the cost
    model's `decode_step_time`, or its `iteration_time` on the rows moved j ahead."""
    fn = getattr(loop.cost_model, "decode_step_time", None)
    if fn is not None:
        return fn([r.prompt_len + r.num_generated for r in rows])
    stepped = Plan(decode=list(rows))
    cost = loop.cost

    def at(j: int) -> float:
        for r in rows:
            r.num_generated += j
        try:
            return cost(stepped, 1)
        finally:
            for r in rows:
                r.num_generated -= j

    return at


def _best_other(sched, rows: list[Request]) -> tuple:
    """The best MLFQ key among live requests outside `rows` (() if there is none)."""
    ids = {r.id for r in rows}
    keys = [mlfq_order(r) for r in sched.live if r.id not in ids]
    return min(keys) if keys else ()


def _still_first(cfg, rows: list[Request], order: list[int], others: tuple) -> bool:
    """Is `schedule` certain to plan `rows` in `order` again: every live request is in the
    batch, or the batch is full and its worst row still ranks before every other one."""
    return others == () or (len(rows) == cfg.max_batch and mlfq_order(rows[order[-1]]) < others)


def run_steady(loop: _Loop, rows: list[Request], max_iterations: int, moved: bool) -> Plan | None:
    """Run the batch `rows` (the last plan's) again and again without calling `schedule`,
    for as long as the scheduler is certain to plan that batch (module docstring); stop
    before any iteration it might plan otherwise, which then runs normally. Where that
    iteration is one in which a row ends, and so still certain to plan the batch, returns
    its plan (pages grown by the scheduler's own `run`) for the loop to run in place of
    `schedule`'s.
    `moved`: the last plan prefilled or preempted, or its step moved an MLFQ queue or ended
    a row (the batch goes on, re-sorted, only where that is certain, as after a move
    within the stretch)."""
    live = [r for r in rows if r.live]
    if len(live) < len(rows):  # rows ended in the last step: the rest, re-sorted (MLFQ)
        rows, moved = live, True
    if not rows:
        return None
    sched, res = loop.sched, loop.res
    cfg, policy, alloc, timing = sched.config, sched.policy, sched.allocator, loop.timing
    emitted, target = loop.emitted, loop.target
    ps, max_seq = cfg.page_size, cfg.max_seq_len
    mlfq = isinstance(policy, MLFQ)
    # -- limits: iteration j may run here only if j < hard
    outer = max_iterations - res.iterations
    every = cfg.promote_every if mlfq else 0
    if every > 0:
        outer = min(outer, (-sched.iteration) % every)  # the policy checks for starving jobs
    ends = outer  # the first iteration in which a row ends (by length or by its trace)
    nxt = []  # per row: the next iteration at which it grows a page
    for r in rows:
        g = r.num_generated
        ctx = r.prompt_len + g
        ends = min(ends, r.max_new_tokens - g - 1, max_seq - ctx, target[r.id] - emitted[r.id] - 1)
        nxt.append(len(r.pages) * ps - ctx + 1)
    hard = max(0, min(outer, ends))
    if min(nxt) < 0:
        return None
    due = [loop.pending[loop.i].arrival] if loop.i < len(loop.pending) else []
    due += [loop.cancels[loop.c][0]] if loop.c < len(loop.cancels) else []
    stop_at = min(due) if due else float("inf")
    reserve = cfg.reserve_pages if type(policy) is not VLLM else 0
    spare = alloc.num_free - reserve  # page growths the pool can give
    n = len(rows)
    host = timing.host + timing.host_per_row * n
    serial, row_update = timing.serial_host, loop.row_update
    rtol = 1 - QUANTUM_RTOL
    q = [r.quantum_used for r in rows]
    thr = [cfg.quantum(r.queue) * rtol for r in rows]
    cost = step_cost(loop, rows)
    next_grow = min(nxt)
    grown_ids: set[str] = set()  # rows whose block tables grew
    others = None  # the best key among live requests outside the batch (on demand)
    resend = True  # compare the rows with those the last decode call sent (first iteration)
    reordered = False
    if moved:
        if not mlfq:
            return None
        others = _best_other(sched, rows)
        order = sorted(range(n), key=lambda k: mlfq_order(rows[k]))
        if not _still_first(cfg, rows, order, others):
            return None
        rows, q, thr, nxt = ([xs[k] for k in order] for xs in (rows, q, thr, nxt))
        cost = step_cost(loop, rows)
        reordered = True  # a new plan, for `preempted`
    t, df, last, busy = loop.t, loop.device_free, loop.last_read, res.device_busy
    last_start = t
    nows: list[float] = []
    ran_out = False  # ran every iteration up to `hard`
    for j in range(hard):
        if stop_at <= t:
            break
        update = False
        if j == next_grow:
            grow = [k for k in range(n) if nxt[k] == j]
            if len(grow) > spare:
                break
            spare -= len(grow)
            for k in grow:  # what `schedule` does, in plan order
                r = rows[k]
                r.pages += alloc.allocate(1, hint=r.pages[-1] + 1 if r.pages else None)
                nxt[k] += ps
                grown_ids.add(r.id)
            next_grow = min(nxt)
            update = True
        seconds = cost(j)
        if resend and row_update:  # the loop's own test: other rows, or other pages
            update = loop.rows_changed(rows)
        resend = False
        if update and row_update:
            seconds += row_update
        # the clocks, as `_Loop.run` and `_Loop.read` move them
        if serial and df > t:
            df += min(host, df - t)
        last_start = t
        dispatched = t + host
        df = (dispatched if dispatched > df else df) + seconds
        now = dispatched if dispatched > df else df
        elapsed = now - (dispatched if dispatched > last else last)
        last = t = now
        busy += seconds
        nows.append(now)
        q = [x + elapsed for x in q]  # `complete`: every row charged the step
        if not (mlfq and any(map(ge, q, thr))):
            continue
        for k in range(n):  # MLFQ's on_step acts only on a used-up quantum
            if q[k] >= thr[k]:
                r = rows[k]
                r.quantum_used = q[k]
                policy.on_step(sched, r, elapsed)
                q[k], thr[k] = r.quantum_used, cfg.quantum(r.queue) * rtol
        if others is None:
            others = _best_other(sched, rows)
        order = sorted(range(n), key=lambda k: mlfq_order(rows[k]))
        if not _still_first(cfg, rows, order, others):
            break  # another request may now take a slot: plan the next iteration
        if order != list(range(n)):
            rows, q, thr, nxt = ([xs[k] for k in order] for xs in (rows, q, thr, nxt))
            cost = step_cost(loop, rows)  # rows still at their contexts before the stretch
            resend = reordered = True
    else:
        ran_out = True
    # -- write back
    done = len(nows)
    if done:
        res.iterations += done
        sched.iteration += done
        res.device_busy = busy
        loop.t = loop.last_read = t
        loop.device_free = df
        if reordered:
            sched._last_batch = list(rows)  # what `schedule` would keep for `preempted`
        records = loop.records
        for r, used in zip(rows, q):
            r.num_generated += done
            r.last_run = last_start
            r.quantum_used = used
            emitted[r.id] += done
            rec = records[r.id]
            rec.output_len += done
            rec.token_times += nows
            if row_update and r.id in grown_ids:
                loop.slot_pages[r.id] = (r.pages[0], len(r.pages))
    # -- the iteration in which a row ends: the same plan, if nothing else is due
    if not (ran_out and ends < outer and stop_at > t and 0 <= ends):
        return None
    if sum(x == hard for x in nxt) > spare:
        return None
    last_plan = Plan(now=t)
    for r in rows:
        sched.run(r, last_plan)  # `schedule`: the batch in order, pages grown
    sched._inflight, sched._last_batch = last_plan, last_plan.batch
    return last_plan
