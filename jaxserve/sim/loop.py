"""The simulator's event loop: the engine's own scheduler, a cost model in place of a model.

    arrivals / turn releases / cancellations, due at the host clock H
      -> plan = Scheduler.schedule(H)                   (the exact scheduler and allocator)
      -> device: start = max(H + host, device free); end = start + cost(plan, steps)
      -> Scheduler.commit(H, steps)                     (tokens in flight count at once)
      -> read the previous plan (or this one, without overlap): H = max(H + host, its end)
         tokens stamped at H; stops (trace lengths) found here -> Scheduler.complete(...)

`Timing` says how the executor is driven. `Timing()` is the JAX engine's loop
(`jaxserve.engine`): one step ahead (plan N+1 is dispatched before step N's tokens are read,
so a stop is seen one step late and the stopped request may compute one more, wasted, row),
multi-step decode chunks when nothing can change (the engine's own rule, with its estimate
of a step's time against the next arrival, `sched.steptime`), and host seconds per iteration.
`SYNC` is a synchronous executor that reads every step before planning the next and costs
nothing on the host: the plain semantics the scheduler tests are worked out in.

With `fast` (the default), a synchronous loop runs steady stretches without re-planning:
while the scheduler is certain to plan the same decode batch again (`steady.py`), the
loop does what `schedule`, `commit` and `complete` would do for it directly, iteration by
iteration on the clocks and quanta but once for the rows' tokens, and hands the iteration in
which a row ends back with its plan already made. The run is the same, token for token and
page for page; only the scheduler's planning and the per-row bookkeeping are skipped.

A request ends when it has emitted `min(output_len, max_new_tokens)` tokens (the trace's
length, as an emulated EOS; `output_len=None`: its cap), when the scheduler ends it at
`max_seq_len`, or when it is cancelled. A later turn of a conversation (`after`) is released
its think time after the previous turn finished. Records are `metrics.RequestRecord`s, so a
simulated run is summarised by the same code as a served one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from jaxserve.metrics import RequestRecord, summarize
from jaxserve.sched.plan import Plan
from jaxserve.sched.policies.fcfs import FCFS
from jaxserve.sched.policies.mlfq import MLFQ
from jaxserve.sched.policies.skip_join import SkipJoinMLFQ
from jaxserve.sched.policies.srpt import SRPT
from jaxserve.sched.policies.vllm import VLLM
from jaxserve.sched.request import Request, State
from jaxserve.sched.scheduler import Scheduler
from jaxserve.sched.steptime import StepTime
from jaxserve.sim.steady import run_steady
from jaxserve.sim.switch import SwitchState

__all__ = ["SYNC", "SimResult", "Timing", "simulate"]


@dataclass(frozen=True)
class Timing:
    """How the executor drives the scheduler and the device (see the module docstring)."""

    overlap: bool = True  # plan and dispatch step N+1 before reading step N
    decode_steps: int = 16  # most decode steps in one device call (1: one step per call)
    host: float = 0.0  # host seconds per iteration with a batch (plan, dispatch, read)
    host_per_row: float = 0.0  # host seconds per batch row
    host_idle: float = 0.0  # host seconds of an iteration with no batch
    serial_host: bool = False  # host work and device work share the cores (no overlap of
    # the two in time: each iteration's device work starts after its host work)

    def __post_init__(self) -> None:
        k = self.decode_steps
        if k < 1 or k & (k - 1):
            raise ValueError(f"decode_steps must be a power of two >= 1, got {k}")
        for name in ("host", "host_per_row", "host_idle"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


SYNC = Timing(overlap=False, decode_steps=1)


@dataclass
class SimResult:
    requests: list[Request]  # every request, in arrival order
    time: float  # when the last step was read
    iterations: int  # plans with device work executed
    records: dict[str, RequestRecord] = field(default_factory=dict)  # id -> timeline
    finished_events: list[str] = field(default_factory=list)  # ids, in the order they ended
    rejected_events: list[str] = field(default_factory=list)  # ids, as plans reported them
    device_busy: float = 0.0  # seconds the device computed or copied
    switch: dict = field(default_factory=dict)  # `SwitchState.stats()` when one priced swaps

    def jct(self) -> dict[str, float]:
        """Completion time (finish - arrival) of every finished request."""
        return {
            rid: rec.finish_time - rec.arrival
            for rid, rec in self.records.items()
            if rec.state == "finished" and rec.finish_time is not None
        }

    def mean_jct(self) -> float:
        j = self.jct()
        return sum(j.values()) / len(j) if j else float("nan")

    def summary(self, **kwargs) -> dict:
        """`metrics.summarize` over the records (the served runs' summary schema)."""
        return summarize([self.records[r.id] for r in self.requests], **kwargs)


@dataclass
class _Flight:
    """A dispatched plan whose tokens have not been read."""

    plan: Plan
    prefill: set[str]  # ids of its prefill rows (one token each)
    end: float  # device time its work ends
    dispatched: float  # host time it was dispatched
    steps: int  # decode steps in the call


def _plan_cost(cost) -> Callable[[Plan, int], float]:
    """`cost.iteration_time(plan, steps)`, or a plain callable of the plan (one step)."""
    fn = getattr(cost, "iteration_time", None)
    if fn is None:
        return lambda plan, steps: cost(plan)
    return fn


def simulate(
    sched: Scheduler,
    requests: Sequence[Request],
    cost,
    *,
    timing: Timing = SYNC,
    cancels: Sequence[tuple[float, str]] = (),
    after: Mapping[str, tuple[str, float]] | None = None,
    max_iterations: int = 10_000_000,
    on_step: Callable[[Scheduler, Plan], None] | None = None,
    fast: bool = True,
    switch: SwitchState | None = None,
) -> SimResult:
    """Run `sched` over `requests` until every one has ended (module docstring).

    cost: a cost model (`iteration_time(plan, steps)`: seconds of device work, swaps
        included), or a callable `plan -> seconds`.
    cancels: (time, request id): cancelled at the first iteration boundary at or after time.
    after: request id -> (previous turn's id, think seconds): released that long after the
        previous turn finished (its `arrival` becomes that time).
    on_step(sched, plan): called after each `schedule` (tests check invariants there; it
        turns the fast path off, so that it sees every plan).
    fast: run steady stretches without re-planning (`steady.py`); the result is the same.
    switch: price swaps and multi-turn reuse as FastSwitch's mechanisms do (`switch.py`;
        None: the cost model prices a plan's swaps); its counts go to `SimResult.switch`.
    Raises if the scheduler stalls with work left and nothing due, or after `max_iterations`.
    """
    loop = _Loop(sched, requests, cost, timing, cancels, after or {})
    loop.switch = switch
    steady = type(sched.policy) in _STEADY_POLICIES and switch is None
    loop.fast = fast and on_step is None and steady
    loop.mlfq = isinstance(sched.policy, MLFQ)  # `run_steady` may go on after a prefill
    return loop.run(max_iterations, on_step)


class _Loop:
    def __init__(self, sched, requests, cost, timing, cancels, after):
        self.fast = False  # repeat steady plans without re-planning (`steady`)
        self.switch: SwitchState | None = None  # prices copies (`switch.py`)
        self.mlfq = False  # ... also after a prefill (MLFQ policies)
        self.sched = sched
        self.cost = _plan_cost(cost)
        self.cost_model = cost
        self.timing = timing
        by_id = {r.id: r for r in requests}
        self.after = dict(after)
        self.followers: dict[str, list[Request]] = {}
        for rid, (prev, _) in self.after.items():
            if rid not in by_id or prev not in by_id:
                raise ValueError(f"after: {rid!r} follows {prev!r}; both must be requests")
            self.followers.setdefault(prev, []).append(by_id[rid])
        self.pending = sorted(
            (r for r in requests if r.id not in self.after), key=lambda r: (r.arrival, r.id)
        )
        self.cancels = sorted(cancels)
        ordered = sorted(requests, key=lambda r: (r.arrival, r.id))
        self.res = SimResult(requests=ordered, time=0.0, iterations=0)
        self.records = self.res.records
        for r in ordered:
            self.records[r.id] = RequestRecord(
                id=r.id, arrival=r.arrival, prompt_len=r.prompt_len, output_len=0,
                client=r.client, state="unfinished",
            )  # fmt: skip
        self.target = {
            r.id: r.max_new_tokens if r.output_len is None else min(r.output_len, r.max_new_tokens)
            for r in requests
        }
        self.emitted = dict.fromkeys(self.target, 0)
        self.t = 0.0  # host clock
        self.device_free = 0.0  # when the device finishes what has been dispatched
        self.last_read = 0.0
        self.step_time = StepTime()  # the engine's estimate of one decode step
        self.row_update = getattr(cost, "row_update_time", 0.0)  # see `rows_changed`
        self.rows_sent: list[str] = []  # the rows of the last decode call
        self.slot_pages: dict[str, tuple[int, int] | None] = {}  # id -> (first page, pages)
        self.i = 0  # next pending arrival
        self.c = 0  # next cancellation

    def rows_changed(self, rows: list[Request]) -> bool:
        """Would the engine send its device-resident batch an update before this decode
        call: other rows, or a row whose block table grew (or is new: its pages differ)?"""
        ids = [r.id for r in rows]
        changed = ids != self.rows_sent
        self.rows_sent = ids
        for r in rows:
            key = (r.pages[0], len(r.pages)) if r.pages else None
            if self.slot_pages.get(r.id) != key:
                self.slot_pages[r.id] = key
                changed = True
        return changed

    def next_due(self) -> float | None:
        due = [self.pending[self.i].arrival] if self.i < len(self.pending) else []
        due += [self.cancels[self.c][0]] if self.c < len(self.cancels) else []
        return min(due) if due else None

    def finish(self, r: Request, when: float, reason: str) -> None:
        rec = self.records[r.id]
        rec.finish_time, rec.finish_reason = when, reason
        rec.state = "cancelled" if reason == "cancelled" else "finished"
        if self.switch is not None and reason != "cancelled":
            self.switch.finished(r, list(r.pages), r.prompt_len + self.emitted[r.id] - 1)
        self.res.finished_events.append(r.id)
        for nxt in self.followers.get(r.id, ()):
            nxt.arrival = nxt.last_run = when + self.after[nxt.id][1]
            self.records[nxt.id].arrival = nxt.arrival
            pos = self.i
            key = (nxt.arrival, nxt.id)
            while (
                pos < len(self.pending) and (self.pending[pos].arrival, self.pending[pos].id) <= key
            ):
                pos += 1
            self.pending.insert(pos, nxt)

    def host_work(self, seconds: float) -> None:
        """The host works `seconds` from now; with `serial_host`, the device is slowed by as
        much of that as overlaps what it is running."""
        if self.timing.serial_host and self.device_free > self.t:
            self.device_free += min(seconds, self.device_free - self.t)
        self.t += seconds

    def read(self, flight: _Flight) -> None:
        """Read a dispatched plan's tokens at max(now, its end); stops are found here."""
        now = self.t = max(self.t, flight.end)
        elapsed = now - max(self.last_read, flight.dispatched)
        self.last_read = now
        plan = flight.plan
        if plan.decode and not plan.prefill and not plan.swap_in:
            self.step_time.add(elapsed / flight.steps)
        records, emitted, target = self.records, self.emitted, self.target
        prefill, steps = flight.prefill, flight.steps
        stopped = set()
        batch = plan.batch
        for r in batch:
            rid = r.id
            rec = records[rid]
            if rec.finish_time is not None:
                continue  # ended meanwhile: its in-flight tokens are never emitted
            left = target[rid] - emitted[rid]
            n = 1 if rid in prefill else steps
            if left < n:
                n = left
            if n <= 0:
                continue
            emitted[rid] += n
            rec.output_len += n
            if n == 1:
                rec.token_times.append(now)
            else:
                rec.token_times += [now] * n
            if rec.first_token_time is None:
                rec.first_token_time = now
            if n == left:
                if r.live:
                    stopped.add(rid)
                self.finish(r, now, "stop" if target[rid] < r.max_new_tokens else "length")
        self.sched.complete(plan, now, elapsed, stopped)
        for r in batch:  # ended by the scheduler (max_seq_len) with every token read
            if r.state is State.FINISHED and not r.cancelled:
                rec = records[r.id]
                if rec.finish_time is None and emitted[r.id] >= r.num_generated:
                    self.finish(r, now, "length")

    def run(self, max_iterations, on_step) -> SimResult:
        sched, timing, res, records = self.sched, self.timing, self.res, self.records
        cfg = sched.config
        inflight: _Flight | None = None
        forced = None  # the next plan, where a steady stretch knows it (`run_steady`)
        while True:
            pending = self.pending
            while self.i < len(pending) and pending[self.i].arrival <= self.t:
                sched.add(pending[self.i])
                self.i += 1
            while self.c < len(self.cancels) and self.cancels[self.c][0] <= self.t:
                rid = self.cancels[self.c][1]
                self.c += 1
                if rid in sched.requests and sched.cancel(rid, self.t):
                    self.finish(sched.requests[rid], self.t, "cancelled")
            if sched.done and (
                inflight is None
                or all(records[r.id].finish_time is not None for r in inflight.plan.batch)
            ):
                if inflight is not None:  # tokens nobody waits for: the device still runs
                    self.t, inflight = max(self.t, inflight.end), None
                due = self.next_due()
                if due is None:
                    break
                self.t = max(self.t, due)
                continue
            plan = forced if forced is not None else sched.schedule(self.t)
            forced = None
            if on_step is not None:
                on_step(sched, plan)
            for r in plan.rejected:
                rec = records[r.id]
                rec.state, rec.finish_reason = "rejected", r.finish_reason
                res.rejected_events.append(r.id)
            current = None
            batch = plan.batch
            if not plan.empty:
                res.iterations += 1
                if res.iterations > max_iterations:
                    raise RuntimeError(f"no completion after {max_iterations} iterations")
                now = self.t
                self.host_work(
                    timing.host + timing.host_per_row * len(batch) if batch else timing.host_idle
                )
                steps = 1
                if batch and timing.overlap and timing.decode_steps > 1:
                    nxt = pending[self.i].arrival if self.i < len(pending) else None
                    steps = _num_steps(sched, plan, self.target, timing.decode_steps,
                                       cfg.page_size, cfg.max_seq_len, nxt, self.t,
                                       self.step_time.value)  # fmt: skip
                if self.switch is not None:
                    seconds = self.switch.price(plan, steps, self.cost)
                    for r in batch:
                        records[r.id].stall_time += self.switch.stall
                else:
                    seconds = self.cost(plan, steps)
                if plan.decode and self.row_update and self.rows_changed(plan.decode):
                    seconds += self.row_update
                self.device_free = max(self.t, self.device_free) + seconds
                res.device_busy += seconds
                if batch:
                    current = _Flight(
                        plan, {r.id for r in plan.prefill}, self.device_free, self.t, steps
                    )
                    sched.commit(now, steps)
            elif inflight is None:
                if sched.done:
                    continue  # the plan only reported rejections
                due = self.next_due()  # nothing dispatched, nothing to read: wait
                if due is None:
                    raise RuntimeError(f"scheduler stalled at t={self.t} with {sched.live}")
                self.t = max(self.t, due)
                continue
            else:
                self.host_work(timing.host_idle)
            if not timing.overlap and current is not None:
                steady = self.fast and timing.decode_steps == 1 and _steady_plan(plan, self.mlfq)
                keys = [(r.queue, r.entered_queue) for r in plan.batch] if steady else None
                self.read(current)
                current = None
                if steady:
                    moved = bool(plan.prefill) or keys != [
                        (r.queue, r.entered_queue) for r in plan.batch
                    ]
                    forced = run_steady(self, plan.batch, max_iterations, moved)
            if inflight is not None:
                self.read(inflight)
            inflight = current
        res.time = self.t
        for r in res.requests:
            records[r.id].preemptions = r.preemptions
        if self.switch is not None:
            res.switch = self.switch.stats()
            for rid, (nbytes, seconds) in self.switch.per_request.items():
                records[rid].swapped_bytes, records[rid].swap_time = nbytes, seconds
        return res


# Policies whose plan depends only on request keys that a decode step leaves alone (or, for
# srpt, only improves for the batch) and on free pages: `steady.run_steady` may repeat their plans.
_STEADY_POLICIES = (FCFS, VLLM, MLFQ, SkipJoinMLFQ, SRPT)


def _steady_plan(plan: Plan, mlfq: bool = False) -> bool:
    """Decode only, no pages moved, nobody rejected: a plan whose batch `run_steady` may
    repeat (a request it preempted ranked after the batch or did not fit, and still does);
    for MLFQ policies also one that prefills (its batch goes on where certain)."""
    return bool(
        (plan.decode or (mlfq and plan.prefill))
        and not (plan.prefill and not mlfq)
        and not (plan.swap_out or plan.swap_in or plan.drop or plan.rejected)
    )


def _num_steps(
    sched: Scheduler,
    plan: Plan,
    target: dict[str, int],
    k: int,
    page_size: int,
    max_seq_len: int,
    next_arrival: float | None,
    now: float,
    step_time: float,
) -> int:
    """Decode steps for one call: the engine's rule (`Engine._num_steps`). Several only when
    nothing can change meanwhile: a decode-only plan holding every live request, no page
    boundary, no finish by length or trace end before the chunk's last token, and the next
    arrival not due; then as many as fit (one compiled loop runs every length)."""
    if plan.prefill or plan.swap_in or plan.swap_out or sched.num_live != len(plan.decode):
        return 1
    if next_arrival is not None and step_time > 0:
        k = min(k, int((next_arrival - now) / step_time))
    for r in plan.decode:
        room = len(r.pages) * page_size - r.context_len + 1
        n = r.num_generated
        k = min(k, r.max_new_tokens - n, target[r.id] - n, max_seq_len - r.context_len + 1, room)
        if k <= 1:
            return 1
    return k
