"""The scheduler: pure Python, decides once per iteration; an executor carries the plan out.

    add(request) ............ WAITING (or REJECTED: can never fit)
    loop:
      plan = schedule(now) .. policy picks the batch; pages are allocated / freed here
      executor: swap_out -> swap_in -> prefill + decode   (one token per batch request)
      finished = update(now, StepResult(iteration_time, tokens, finished))
    cancel(id) .............. frees device pages and host accounting at once

The same object drives the JAX engine and the simulator (`jaxserve.sched.simloop`). Policies
(`jaxserve.sched.policies`) decide *who* runs; this class owns the bookkeeping they share:
the page allocator, host-page accounting, state transitions, events, and invariants.

Page rules. Before a request computes it owns pages for `context_len` tokens (see
`request.py`): a prefill gets them fresh, a decode grows its block table by at most one page,
a swap-in gets NEW pages (its `pages` becomes them). Pages are freed on finish, drop and
swap-out (the swap-out entry keeps the page ids for the copy). `fcfs` reserves pages for
prompt + max_new_tokens at admission instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxserve.sched import preempt
from jaxserve.sched.allocator import PageAllocator
from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.plan import Plan
from jaxserve.sched.request import Request, State, pages_for

__all__ = ["Scheduler", "SchedulerConfig", "StepResult", "make_scheduler", "reject_reason"]


@dataclass
class StepResult:
    """What the executor reports after running a plan."""

    iteration_time: float  # seconds the iteration took: charged to MLFQ quanta (see
    # `SchedulerConfig.charges`)
    tokens: dict[str, int] = field(default_factory=dict)  # id -> tokens emitted (1; missing = 1)
    finished: set[str] = field(default_factory=set)  # ids whose emitted token hit EOS / a stop


class Scheduler:
    """Owns the requests, the page allocator and host accounting; a policy decides."""

    def __init__(self, config: SchedulerConfig, policy: str = "fcfs"):
        from jaxserve.sched.policies import get_policy

        self.config = config
        self.allocator = PageAllocator(config.num_pages, config.page_size)
        self.policy = get_policy(policy)(config)
        self.requests: dict[str, Request] = {}  # every request ever added, in add order
        self.iteration = 0  # completed iterations (update calls after a non-empty batch)
        self.host_used = 0  # host pages held by SWAPPED requests
        self._live: dict[str, Request] = {}  # not FINISHED / REJECTED, in add order
        self._seq = 0  # monotone counter: add order and MLFQ queue-entry order
        self._inflight: Plan | None = None  # the last plan, until `update`
        self._last_batch: list[Request] = []  # the batch of the last plan, for `preempted`
        self._rejected: list[Request] = []  # rejected since the last plan

    # ---------------------------------------------------------------- public API
    def add(self, request: Request) -> Request:
        """Register an arrived request: WAITING, or REJECTED if it can never run."""
        if request.id in self.requests:
            raise ValueError(f"duplicate request id {request.id!r}")
        if request.prompt_len < 1 or request.max_new_tokens < 1:
            raise ValueError(f"{request.id}: prompt_len and max_new_tokens must be >= 1")
        if not isinstance(request.priority, int) or isinstance(request.priority, bool):
            raise ValueError(f"{request.id}: priority must be an int, got {request.priority!r}")
        if request.state is not State.WAITING or request.num_generated or request.pages:
            raise ValueError(f"{request.id}: add a fresh request (state WAITING, nothing run)")
        request.seq = request.entered_queue = self.next_seq()
        self.requests[request.id] = request
        reason = reject_reason(self.config, request.prompt_len, request.max_new_tokens)
        if reason:
            request.state = State.REJECTED
            request.finish_reason = f"rejected: {reason}"
            self._rejected.append(request)
            return request
        self._live[request.id] = request
        self.policy.on_add(self, request)
        return request

    def schedule(self, now: float) -> Plan:
        """Decide this iteration. The previous plan with a batch must have been committed
        (`commit`, or `update`, which commits and completes it)."""
        if self._inflight is not None and self._inflight.batch:
            raise RuntimeError("schedule() called twice without update() for a plan with a batch")
        plan = Plan(now=now, rejected=self._rejected)
        self._rejected = []
        self.policy.before_schedule(self, now)
        self.policy.plan(self, plan)
        if len(plan.batch) > self.config.max_batch:
            raise AssertionError(f"{self.policy.name} planned {len(plan.batch)} > max_batch")
        in_batch = {r.id for r in plan.batch}
        for r in self._last_batch:
            if r.live and r.id not in in_batch:
                r.preemptions += 1
                plan.preempted.append(r)
        self._last_batch = plan.batch
        self._inflight = plan
        return plan

    def update(self, now: float, result: StepResult) -> list[Request]:
        """Account for the executed plan; returns the requests that finished in this step.
        (`commit` then `complete`, for an executor that reads each step before planning the
        next.)"""
        plan = self._inflight
        if plan is None:
            raise RuntimeError("update() without a scheduled plan")
        finished = self.commit(now, result.tokens, stopped=result.finished)
        return finished + self.complete(plan, now, result.iteration_time)

    def commit(
        self, now: float, tokens: dict[str, int] | int = 1, stopped: set[str] = frozenset()
    ) -> list[Request]:
        """The executor dispatched the scheduled plan: each batch request's tokens (1, or
        `tokens`) count as generated from now on, though the executor may not have read them
        yet (tokens in flight). So page needs, length limits and the next `schedule` see
        them: requests that reach their length limit finish here ("length"), and so do the
        `stopped` ones ("stop", for an executor that already knows). The next plan may be
        scheduled at once; `complete` follows when the tokens are read."""
        plan = self._inflight
        if plan is None:
            raise RuntimeError("commit() without a scheduled plan")
        self._inflight = None
        batch = {r.id: r for r in plan.batch}
        per_row = tokens if isinstance(tokens, dict) else {}
        plan.prefill_lens = [r.context_len for r in plan.prefill]
        for rid in list(per_row) + list(stopped):
            if rid not in batch:
                raise ValueError(f"result names {rid!r}, which was not in the plan's batch")
        finished = []
        for r in plan.batch:
            if r.cancelled:
                continue
            n = per_row.get(r.id, 1) if isinstance(tokens, dict) else tokens
            if n < 1:
                raise ValueError(f"{r.id}: {n} tokens in one step")
            r.num_generated += n
            r.last_run = now
            self.policy.on_tokens(self, r, n)
            if r.first_token_time is None:
                r.first_token_time = now
            if r.id in stopped:
                self._finish(r, now, "stop")
            elif r.num_generated >= r.max_new_tokens or r.context_len > self.config.max_seq_len:
                self._finish(r, now, "length")
            else:
                continue
            finished.append(r)
        if plan.batch:
            self.iteration += 1
        return finished

    def complete(
        self, plan: Plan, now: float, iteration_time: float, stopped: set[str] = frozenset()
    ) -> list[Request]:
        """A committed plan's tokens were read: charge its measured time to MLFQ quanta and
        finish the requests whose token was a stop ("stop"). Other plans may have been
        scheduled and committed since; a request that ended meanwhile is skipped. Returns the
        requests it finished."""
        prefill_charges, decode_charge = self.config.charges(
            iteration_time, plan.prefill_lens, len(plan.decode)
        )
        charge = {r.id: c for r, c in zip(plan.prefill, prefill_charges)}
        finished = []
        for r in plan.batch:
            if not r.live:
                continue
            if r.id in stopped:
                self._finish(r, now, "stop")
                finished.append(r)
                continue
            r.quantum_used += charge.get(r.id, decode_charge)
            self.policy.on_step(self, r, iteration_time)
        return finished

    def cancel(self, request_id: str, now: float | None = None) -> bool:
        """Finish a request now, freeing its device pages and host accounting. False if it
        had already ended. Safe while its plan executes: freed pages are reused only by the
        next `schedule`, which comes after `update`."""
        r = self.requests[request_id]
        if not r.live:
            return False
        r.cancelled = True
        self._finish(r, now, "cancelled")
        return True

    def forget(self, request_id: str) -> None:
        """Drop the record of an ended request (FINISHED or REJECTED and reported)."""
        r = self.requests.get(request_id)
        if r is None:
            return
        if r.live or r in self._rejected:
            raise ValueError(f"request {request_id!r} has not ended")
        del self.requests[request_id]

    @property
    def done(self) -> bool:
        """Nothing left: every request is FINISHED or REJECTED, and every rejection has been
        reported by a plan."""
        return not self._live and not self._rejected

    @property
    def live(self) -> list[Request]:
        return list(self._live.values())

    @property
    def num_live(self) -> int:
        """Requests not yet FINISHED or REJECTED."""
        return len(self._live)

    def _in(self, state: State) -> list[Request]:
        return [r for r in self._live.values() if r.state is state]

    @property
    def running(self) -> list[Request]:
        """Resident requests (KV on device), in or out of the current batch."""
        return self._in(State.RUNNING)

    @property
    def waiting(self) -> list[Request]:
        return self._in(State.WAITING)

    @property
    def swapped(self) -> list[Request]:
        return self._in(State.SWAPPED)

    @property
    def dropped(self) -> list[Request]:
        return self._in(State.DROPPED)

    @property
    def finished(self) -> list[Request]:
        return [r for r in self.requests.values() if r.state is State.FINISHED]

    @property
    def rejected(self) -> list[Request]:
        return [r for r in self.requests.values() if r.state is State.REJECTED]

    # ---------------------------------------------------------------- for policies
    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def step_pages(self, r: Request) -> int:
        """Pages `r` must own to compute its next step."""
        return r.pages_needed(self.config.page_size)

    def max_pages(self, r: Request) -> int:
        """Pages for the most context `r` can ever need (prompt + max_new_tokens, capped)."""
        return pages_for(min(r.max_len, self.config.max_seq_len), self.config.page_size)

    def kv_pages(self, r: Request) -> int:
        """Pages holding `r`'s written KV (what a swap copies)."""
        return preempt.kv_pages(self.config, r)

    def victim_mode(self, r: Request, host_used: int | None = None) -> preempt.Mode:
        return preempt.victim_mode(
            self.config, r, self.host_used if host_used is None else host_used
        )

    def evict(self, r: Request, plan: Plan, mode: preempt.Mode | None = None) -> preempt.Mode:
        """Take a resident request's KV off the device: swap it to host or drop it."""
        if r.state is not State.RUNNING:
            raise AssertionError(f"evicting {r}, which is not resident")
        mode = mode or self.victim_mode(r)
        if mode == "swap":
            k = self.kv_pages(r)
            plan.swap_out.append((r, r.pages[:k]))
            r.host_pages = k
            self.host_used += k
            r.state = State.SWAPPED
        else:
            plan.drop.append(r)
            r.state = State.DROPPED
        self.allocator.free(r.pages)
        r.pages = []
        return mode

    def swap_failed(self, r: Request) -> None:
        """The executor could not copy a swapped-out request's KV to the host (host memory
        ran out): its KV is lost, so it is dropped instead and resumes by re-prefilling."""
        if r.state is not State.SWAPPED:
            raise AssertionError(f"swap_failed for {r}, which is not swapped out")
        self.host_used -= r.host_pages
        r.host_pages = 0
        r.state = State.DROPPED

    def run(self, r: Request, plan: Plan, pages: int | None = None) -> None:
        """Put `r` in this iteration's batch, giving it the pages its step needs (`pages`
        pages instead, for a prefill that reserves more, e.g. fcfs)."""
        if r.state is State.RUNNING:
            self._grow(r, self.step_pages(r))
            plan.decode.append(r)
        elif r.state is State.SWAPPED:
            self.swap_in(r, plan)
            self._grow(r, self.step_pages(r))
            plan.decode.append(r)
        elif r.state in (State.WAITING, State.DROPPED):
            r.pages = self.allocator.allocate(pages or self.step_pages(r))
            r.state = State.RUNNING
            plan.prefill.append(r)
        else:
            raise AssertionError(f"cannot run {r}")

    def swap_in(self, r: Request, plan: Plan) -> None:
        """Copy a SWAPPED request's host KV into new device pages (it becomes resident)."""
        if plan.swap_out:
            raise AssertionError("swap-in planned in an iteration that swaps out")
        r.pages = self.allocator.allocate(r.host_pages)
        plan.swap_in.append((r, list(r.pages)))
        self.host_used -= r.host_pages
        r.host_pages = 0
        r.state = State.RUNNING

    def check_invariants(self) -> None:
        """Every page is free or owned by exactly one live request; states match holdings."""
        self.allocator.check()
        owner: dict[int, str] = {}
        host = 0
        for r in self.requests.values():
            if not r.live and (r.pages or r.host_pages):
                raise AssertionError(f"{r} has ended but holds pages")
            if (r.id in self._live) != r.live:
                raise AssertionError(f"{r}: live index out of date")
            for p in r.pages:
                if p in owner:
                    raise AssertionError(f"page {p} owned by {owner[p]} and {r.id}")
                if p == 0 or self.allocator.is_free(p):
                    raise AssertionError(f"page {p} of {r.id} is null or free")
                owner[p] = r.id
            if r.state is State.RUNNING and len(r.pages) < self.kv_pages(r):
                raise AssertionError(f"{r} has fewer pages than its KV")
            if r.state is not State.RUNNING and r.pages:
                raise AssertionError(f"{r} is not resident but owns device pages")
            if r.state is State.SWAPPED and r.host_pages != self.kv_pages(r):
                raise AssertionError(f"{r}: host pages != KV pages {self.kv_pages(r)}")
            if r.state is not State.SWAPPED and r.host_pages:
                raise AssertionError(f"{r} holds host pages but is not SWAPPED")
            host += r.host_pages
        if len(owner) + self.allocator.num_free != self.allocator.capacity:
            raise AssertionError(
                f"leak: {len(owner)} owned + {self.allocator.num_free} free "
                f"!= {self.allocator.capacity}"
            )
        if host != self.host_used:
            raise AssertionError(f"host_used {self.host_used} != {host} held")
        if self.config.host_pages is not None and host > self.config.host_pages:
            raise AssertionError(f"host budget exceeded: {host} > {self.config.host_pages}")

    # ---------------------------------------------------------------- internals
    def _grow(self, r: Request, n: int) -> None:
        if n > len(r.pages):
            hint = r.pages[-1] + 1 if r.pages else None  # stay contiguous when possible
            r.pages += self.allocator.allocate(n - len(r.pages), hint=hint)

    def _finish(self, r: Request, now: float | None, reason: str) -> None:
        self.allocator.free(r.pages)
        r.pages = []
        self.host_used -= r.host_pages
        r.host_pages = 0
        r.state = State.FINISHED
        r.finish_time = now
        r.finish_reason = reason
        del self._live[r.id]


def reject_reason(config: SchedulerConfig, prompt_len: int, max_new_tokens: int) -> str | None:
    """Why a request can never run under `config` (it is rejected on arrival), or None."""
    if prompt_len > config.max_seq_len:
        return f"prompt of {prompt_len} tokens > max_seq_len {config.max_seq_len}"
    need = pages_for(min(prompt_len + max_new_tokens, config.max_seq_len), config.page_size)
    if need > config.usable_pages:
        return f"needs {need} pages for prompt + max_new_tokens, the pool has {config.usable_pages}"
    return None


def make_scheduler(policy_name: str, config: SchedulerConfig) -> Scheduler:
    """A scheduler running the named policy (see `jaxserve.sched.policies.POLICIES`)."""
    return Scheduler(config, policy_name)
