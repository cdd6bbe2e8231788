"""The serving loop: the scheduler decides, the engine carries out its plan on a real model.

    step():  plan N+1 = Scheduler.schedule(now)        (while step N runs on the device)
             dispatch: swap_out (gather) -> swap_in (scatter) -> prefill [B, T]
                       -> slot updates (one packed int32 array) -> decode over the slots
             Scheduler.commit(N+1)                      (its tokens now count, in flight)
             read step N's tokens -> stop checks -> events -> Scheduler.complete(N)

The device never waits for the host. Nothing in the loop blocks except reading the tokens of
the step dispatched one iteration earlier, and by then the device is busy with the next one:

* Device-resident batch. The decode batch lives on the device as a `SlotState` (see
  `jaxserve.batch`): one record per slot (last token, position, block-table row, sampling
  parameters, RNG key, budget, stop ids). A request takes a slot when it first decodes and
  keeps it while its KV is resident; each step's decode reads its input tokens from the slots
  the previous step wrote. The host sends only what changed (rows inserted, pages grown, the
  set of slots to decode), packed in one array, and nothing at all when nothing changed.
  A prompt's first token goes from the prefill's output into its slot on the device too.
* One step ahead. The scheduler counts dispatched tokens at once (`commit`), so page needs
  and length limits are exact while they are in flight; stops and measured times arrive with
  `complete` one iteration later. A request that stops on a stop token or string has at most
  one more step computed (multi-step: the rest of its chunk, where the device has already
  deactivated it); those tokens are never emitted. Its pages are freed by the scheduler at
  once, which is safe: every later use of a page comes after that step in device order (all
  KV work takes the pages the previous call returned).
* Multi-step decode. When nothing can change for k steps (decode-only plan, every live
  request in it, no page boundary, no finish by length, no stop string, no arrival due), one
  device call runs k steps with stop checks on the device (`decode_steps`).
* Asynchronous swaps. Swap-outs and swap-ins are dispatched, never waited for (see
  `kvcache/host.py`); a page freed by a swap-out can be reused by the next step at once.
  `jaxserve.switch` carries out the plan's context switches: a swap-out copies only the
  pages not already on the host, a copy the host cannot hold drops its request, a drop
  resumes by recompute (the base's exact prefill) or prediction (`preempt.recovery`), and
  each request's preempt and resume times go on its `Timeline`.

The dispatch side of a step is `jaxserve.dispatch`, its read side `jaxserve.readback`; both
are parts of `Engine`.

`overlap=False` reads each step's tokens right after dispatching it (the scheduler then sees
every result before the next plan, as in a synchronous loop); outputs are the same either way.

Jobs are preempted between tokens: a job the plan leaves out simply does not run this
iteration; its KV stays in its pages unless the plan swaps it out or drops it. Shapes are
bucketed (batch, prompt length, block-table width and update count to powers of two; a chunk
of decode steps is a loop whose length is an argument, one program for every length), so
after `warmup` an iteration compiles nothing (`CompileCounter`).

A request's sampled token at position p depends only on its seed and p (see sampling.py), and
swapped KV comes back bit-exact, so greedy and seeded outputs do not depend on preemption.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from jax.sharding import Mesh

from jaxserve.device_batch import DeviceBatch
from jaxserve.dispatch import Dispatching, InFlight
from jaxserve.errors import InputError
from jaxserve.events import Event, Timeline, UnknownRequestError, token_ids
from jaxserve.kvcache.host import HostTier
from jaxserve.kvcache.reuse import ConversationKV, Kept
from jaxserve.readback import Reading
from jaxserve.runner import CompileCounter, ModelRunner, ServingModel
from jaxserve.sampling import SamplingParams
from jaxserve.sched import Plan, Request, SchedulerConfig, make_scheduler
from jaxserve.sched.steptime import StepTime
from jaxserve.switch import ContextSwitch
from jaxserve.tokenizer import Tokenizer

__all__ = ["Engine", "Event", "Timeline", "UnknownRequestError"]


class Engine(Dispatching, Reading):
    def __init__(
        self,
        model: ServingModel,
        policy: str,
        sched_config: SchedulerConfig,
        tokenizer: Tokenizer | None = None,
        mesh: Mesh | None = None,
        host_mode: str = "auto",
        clock: Callable[[], float] = time.perf_counter,
        runner: ModelRunner | None = None,
        overlap: bool = True,
        decode_steps: int = 16,
        max_stop_ids: int = 4,
        sync_swaps: bool = False,
        swap_transfer: str = "gather",
        reuse: bool = False,
        host_bytes: int | None = None,
    ):
        """`runner` may be shared between engines (one set of compiled programs).
        `overlap`: plan and dispatch the next step before reading this one (module doc).
        `decode_steps`: the most decode steps one device call runs when nothing can change
        meanwhile (a power of two).
        `max_stop_ids`: stop token ids checked on the device per request (the host checks
        all of them; a request with more never runs multi-step).
        `sync_swaps`: wait for every swap before going on, as a synchronous engine does (the
        baseline that measurements compare against).
        `swap_transfer`: how swaps are cut into transfers (`HostTier`): "gather" (one per
        swap), "groups" (one per contiguous run of pages), "pages" (one per page).
        `reuse`: keep a finished turn's KV on the host for the next turn of its conversation
        (`submit(conversation=...)`), which then prefills only its new tokens.
        `host_bytes`: the host tier's budget (None: unbounded); a swap-out beyond it drops
        its request instead (`jaxserve.switch`)."""
        if decode_steps < 1 or decode_steps & (decode_steps - 1):
            raise ValueError(f"decode_steps must be a power of two >= 1, got {decode_steps}")
        self.runner = runner if runner is not None else ModelRunner(model, mesh)
        self.config = model.config
        self.sched_config = sched_config
        self.scheduler = make_scheduler(policy, sched_config)
        self.policy = policy
        self.tokenizer = tokenizer
        self.page_size = sched_config.page_size
        self.kv = self.runner.new_kv(sched_config.num_pages, self.page_size)
        if sched_config.preemption == "predict" and not self.runner.can_predict:
            raise InputError(
                "preemption 'predict' re-predicts a dropped request's cache: it needs a model "
                "that predicts its prompts' cache (--prefill=kv_prediction:CKPT)"
            )
        if sched_config.predict_tokens_per_s is not None and not self.runner.can_predict:
            raise InputError("predict_tokens_per_s is set but the model cannot predict its cache")
        self.host = HostTier(self.runner.kv_sharding, host_mode, swap_transfer, host_bytes)
        self.reuse = reuse
        self.conversations = ConversationKV()  # kept turns (host), by conversation
        self._conv: dict[str, str] = {}  # request -> its conversation
        self._reuse: dict[str, Kept] = {}  # request -> kept KV its first prefill starts from
        self.clock = clock
        self._t0 = clock()
        self._ids = itertools.count()
        self._tokens: dict[str, list[int]] = {}  # prompt + generated tokens read so far
        self._params: dict[str, SamplingParams] = {}
        self._keys: dict[str, np.ndarray] = {}
        self._stop_at: dict[str, int] = {}  # trace replay: emulated EOS after this many tokens
        self.overlap = overlap
        self.decode_steps = decode_steps
        # the device side of the batches: prefill arrays and the resident decode slots
        max_steps = decode_steps if overlap else 1
        self.device = DeviceBatch(self.runner, sched_config, max_stop_ids, max_steps)
        self._copy_ahead = self.runner.mesh.devices.flat[0].platform != "cpu"
        self._inflight: InFlight | None = None
        self._last_read = self.now()
        self._step_time = StepTime()  # one decode step's seconds (sizes chunks)
        self.next_arrival: float | None = None  # engine clock; multi-step stays before it
        self.timelines: dict[str, Timeline] = {}
        self.iterations = 0
        self.decode_calls = 0  # decode device calls (an iteration may run several steps)
        self.busy_time = 0.0  # seconds between reads of consecutive steps
        self.swap_time = 0.0  # host seconds spent dispatching swaps
        self.swap_wait = 0.0  # host seconds spent waiting for swaps (only with sync_swaps)
        self.sync_swaps = sync_swaps
        self.switch = ContextSwitch(self)  # swap-outs, drops, resumes (jaxserve.switch)
        # host seconds by phase: schedule (plan, commit, complete), dispatch (swaps, batch
        # and slot updates, device calls), read (emit, stop checks), wait (for tokens)
        self.host_time = dict.fromkeys(("schedule", "dispatch", "read", "wait"), 0.0)

    # -- requests -------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock() - self._t0

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        arrival: float | None = None,
        output_len: int | None = None,
        client: str = "default",
        stop_at_output_len: bool = False,
        conversation: str | None = None,
        priority: int = 0,
    ) -> str:
        """Queue a request; returns its id. `output_len` is known only to oracle policies.

        `stop_at_output_len` replays a trace: the request ends ("stop") after `output_len`
        tokens, as if the model had emitted EOS there. Its page needs stay bounded by
        `params.max_new_tokens`, which is all a non-oracle policy can plan with.
        `conversation`: with `reuse`, the prompt may start with an earlier turn of the same
        conversation (its prompt and output); that turn's kept KV then comes back from the
        host and only the new tokens are prefilled.
        `priority`: lower runs first under the `priority` policy (other policies ignore it).
        """
        params = params if params is not None else SamplingParams()
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self._tokens:
            raise InputError(f"request id {rid!r} already submitted")
        ids = token_ids(rid, prompt_ids)
        if not ids:
            raise InputError(f"request {rid!r}: empty prompt")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise InputError(f"request {rid!r}: token ids {bad[:5]} outside the vocabulary")
        if params.stop_strings and self.tokenizer is None:
            raise InputError(f"request {rid!r}: stop strings need an engine with a tokenizer")
        if stop_at_output_len and (output_len is None or output_len < 1):
            raise InputError(f"request {rid!r}: stop_at_output_len needs an output_len >= 1")
        arrival = self.now() if arrival is None else arrival
        if stop_at_output_len:
            self._stop_at[rid] = output_len
        self._tokens[rid] = ids
        self._params[rid] = params
        self._keys[rid] = np.asarray(
            [params.seed & 0xFFFFFFFF, zlib.crc32(rid.encode())], np.uint32
        )
        self.timelines[rid] = Timeline(rid, arrival, len(ids), client)
        if conversation is not None:
            self._conv[rid] = conversation
            kept = self.conversations.take(conversation, ids) if self.reuse else None
            if kept is not None:
                self._reuse[rid] = kept
        self.scheduler.add(
            Request(
                id=rid,
                arrival=arrival,
                prompt_len=len(ids),
                max_new_tokens=params.max_new_tokens,
                output_len=output_len,
                client=client,
                priority=priority,
            )
        )
        return rid

    def _timeline(self, request_id: str) -> Timeline:
        tl = self.timelines.get(request_id)
        if tl is None:
            raise UnknownRequestError(f"unknown request id {request_id!r}")
        return tl

    def cancel(self, request_id: str) -> None:
        """Stop a request now; every page it holds (device or host) is freed. Tokens of it
        still in flight are dropped when they arrive."""
        tl = self._timeline(request_id)
        self.scheduler.cancel(request_id)
        self.switch.forget(request_id)
        self._unreuse(request_id)
        self.device.release(request_id)
        if tl.finish_time is None:
            tl.finish_time, tl.finish_reason = self.now(), "cancelled"

    def release(self, request_id: str) -> None:
        """Forget an ended request (its timeline, tokens and scheduler record), so a
        long-running server does not grow without end. Read what you need of it first; its
        tokens still in flight are dropped when they arrive, as after a cancel."""
        tl = self._timeline(request_id)
        if tl.finish_time is None:
            raise ValueError(f"release of request {request_id!r}, which has not ended")
        rid = request_id
        self.scheduler.forget(rid)
        self.device.release(rid)
        tables = (self.timelines, self._tokens, self._params, self._keys, self._stop_at)
        self.switch.forget(rid)
        self._unreuse(rid)
        for table in tables + (self._conv,):
            table.pop(rid, None)

    def _unreuse(self, rid: str) -> None:
        kept = self._reuse.pop(rid, None)
        if kept is not None:
            kept.host.release()

    def output(self, request_id: str) -> list[int]:
        return self._timeline(request_id).output_ids

    @property
    def has_work(self) -> bool:
        """Requests not yet ended, or tokens in flight for a request that has not ended."""
        if not self.scheduler.done:
            return True
        flight = self._inflight
        return flight is not None and any(
            r.id in self.timelines and self.timelines[r.id].finish_time is None
            for r in flight.plan.batch
        )

    # -- the loop -------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """One iteration: plan and dispatch the next step, then read the previous one."""
        clock = time.perf_counter
        t0 = clock()
        now = self.now()
        events: list[Event] = []
        plan: Plan = self.scheduler.schedule(now)
        t1 = clock()
        for r in plan.rejected:
            tl = self.timelines[r.id]
            # the scheduler's reason ("rejected: <why>") reaches the record and the event
            tl.rejected, tl.finish_time, tl.finish_reason = True, now, r.finish_reason
            events.append(Event("reject", r.id, now, detail=r.finish_reason))
        swapped_out = self.switch.dispatch(plan, now, events)
        previous, current = self._inflight, None
        t2 = t3 = clock()
        if plan.batch:
            current = self._dispatch(plan, swapped_out)
            t2 = clock()
            for r in self.scheduler.commit(now, current.steps):
                self._keep(r)  # ended by length: the slot's last step is queued
                self.device.release(r.id)
            t3 = clock()
        self.host_time["schedule"] += (t1 - t0) + (t3 - t2)
        self.host_time["dispatch"] += t2 - t1
        if not self.overlap and current is not None:
            events += self._read(current)
            current = None
        if previous is not None:
            events += self._read(previous)
        self._inflight = current
        return events

    def account_swap(self, rid: str, nbytes: int) -> None:
        tl = self.timelines[rid]
        tl.swapped_bytes += nbytes
        # the copy runs on the device, ordered by data dependencies: its expected duration
        tl.swap_time += nbytes / self.sched_config.swap_bandwidth

    def warmup(self, max_prompt: int, max_context: int, extend: bool | None = None) -> int:
        """Compile every prefill, decode, slot-update and swap bucket a run up to these
        lengths can hit. Returns the number of compilations it caused (0 when warm)."""
        before = CompileCounter.count()
        extend = self.reuse if extend is None else extend
        sc = self.sched_config
        # drops re-prefill whole contexts (by the base's prefill too, for a predicting
        # model). Only where the preemption mode plans drops: a swap the host cannot hold
        # also drops, but that fallback compiles its recovery prefill when it first happens
        # (up to 3 lengths x 5 batch sizes, a fifth of the warm-up, that few runs need)
        recover = sc.preemption != "swap"
        self.kv = self.device.warmup(self.kv, self.host, max_prompt, max_context, extend, recover)
        return CompileCounter.count() - before

    # -- driving ------------------------------------------------------------------------

    def stream(self, request_id: str) -> Iterator[int]:
        """Yield a request's tokens as they are produced (runs the loop meanwhile)."""
        seen = 0
        tl = self._timeline(request_id)
        while True:
            out = tl.output_ids
            while seen < len(out):
                yield out[seen]
                seen += 1
            if tl.finish_time is not None:
                return
            if not self.has_work:
                return
            self.step()

    def run_until_done(self, max_iterations: int | None = None) -> None:
        for _ in itertools.count() if max_iterations is None else range(max_iterations):
            if not self.has_work:
                return
            self.step()

    def replay(self, arrivals: Sequence[tuple[float, Callable[[float], str]]]) -> None:
        """Submit each request when the clock reaches its arrival (seconds from now) and run.

        arrivals: (arrival offset, submit(arrival time on the engine clock)) sorted by time;
        a request is submitted at the first iteration boundary after it arrives, and its
        latency counts from the arrival. When the engine is idle it sleeps until the next.
        Multi-step decode chunks end before the next arrival is due.
        """
        pending = list(arrivals)
        base = self.now()
        i = 0
        while i < len(pending) or self.has_work:
            now = self.now() - base
            while i < len(pending) and pending[i][0] <= now:
                pending[i][1](base + pending[i][0])
                i += 1
            self.next_arrival = base + pending[i][0] if i < len(pending) else None
            if self.has_work:
                self.step()
            elif i < len(pending):
                time.sleep(max(0.0, pending[i][0] - (self.now() - base)))
        self.next_arrival = None
