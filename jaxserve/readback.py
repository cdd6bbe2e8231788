"""The engine's read side: a dispatched step's tokens read back, emitted and checked for
stops, its plan completed with the scheduler, and a finished turn's KV kept for the next turn.

`Reading` is a part of `jaxserve.engine.Engine` (its state: `timelines`, `scheduler`,
`switch`, `device`, `conversations`, the per-request `_tokens`, `_params`, `_stop_at`,
`_conv`); it holds no state of its own.
"""

from __future__ import annotations

import time

import numpy as np

from jaxserve.dispatch import InFlight
from jaxserve.events import Event
from jaxserve.sched import Request, State
from jaxserve.sched.request import pages_for


class Reading:
    def _read(self, flight: InFlight) -> list[Event]:
        """Read a dispatched step's tokens, emit them, check stops, complete its plan."""
        clock = time.perf_counter
        t0 = clock()
        first = None if flight.prefill_out is None else np.asarray(flight.prefill_out)
        out = None if flight.decode_out is None else np.asarray(flight.decode_out)
        t1 = clock()  # the only wait of the loop: for this step's tokens
        sampled: list[tuple[str, list[int]]] = []
        if first is not None:
            sampled += [(r.id, [int(first[i])]) for i, r in enumerate(flight.prefill_rows)]
        if out is not None:
            toks, emitted = out
            for i, r in enumerate(flight.decode_rows):
                sampled.append((r.id, [int(x) for x in toks[i][emitted[i] != 0]]))
        t = self.now()
        elapsed = t - max(self._last_read, flight.dispatched)
        self._last_read = t
        self.busy_time += elapsed
        self.iterations += 1
        if flight.decode_out is not None and flight.prefill_out is None and not flight.plan.swap_in:
            self._step_time.add(elapsed / flight.steps)
        for host in flight.swapped_out:
            host.settle()
        self.switch.read(flight.plan, elapsed)
        events: list[Event] = []
        stopped = set()
        for rid, toks in sampled:
            tl = self.timelines.get(rid)
            if tl is None:
                continue  # released meanwhile
            for tok in toks:
                if tl.finish_time is not None:
                    break  # ended meanwhile (stop, cancel): later tokens are never emitted
                reason = self._emit(rid, tok, t)
                events.append(Event("token", rid, t, token=tok))
                if reason:
                    events.append(Event("finish", rid, t, detail=reason))
                    if reason == "stop":
                        stopped.add(rid)
        t2 = clock()
        for r in self.scheduler.complete(flight.plan, t, elapsed, stopped):
            if r.id in self.timelines:
                self._keep(r)
            self.device.release(r.id)
        t3 = clock()
        for r in flight.plan.batch:
            tl = self.timelines.get(r.id)
            if (
                tl is not None
                and tl.finish_time is None
                and r.state == State.FINISHED
                and not self._behind(r)
            ):
                self._finish(r.id, t, "length")  # the scheduler's context limit
                events.append(Event("finish", r.id, t, detail="length"))
        self.host_time["wait"] += t1 - t0
        self.host_time["schedule"] += t3 - t2
        self.host_time["read"] += clock() - t1 - (t3 - t2)
        return events

    def _behind(self, r: Request) -> bool:
        """Tokens of `r` still in flight (committed but not read)?"""
        return len(self._tokens[r.id]) < r.context_len

    def _emit(self, rid: str, token: int, t: float) -> str | None:
        """Record a token; returns a finish reason when it ends the request."""
        self._tokens[rid].append(token)
        tl = self.timelines[rid]
        tl.output_ids.append(token)
        tl.token_times.append(t)
        p = self._params[rid]
        reason = None
        if token in p.stop_token_ids:
            reason = "stop"
        elif p.stop_strings and self.tokenizer is not None:
            text = self.tokenizer.decode(tl.output_ids)
            if any(s in text for s in p.stop_strings):
                reason = "stop"
        if reason is None and len(tl.output_ids) == self._stop_at.get(rid):
            reason = "stop"
        if reason is None and len(tl.output_ids) >= p.max_new_tokens:
            reason = "length"
        if reason:
            self._finish(rid, t, reason)
        return reason

    def _finish(self, rid: str, t: float, reason: str) -> None:
        tl = self.timelines[rid]
        tl.finish_time, tl.finish_reason = t, reason
        self.switch.forget(rid, keep_resident=True)  # `_keep` may still copy it out
        self._unreuse(rid)
        conv = self._conv.get(rid)
        if conv is not None and reason in ("stop", "length"):
            self.conversations.complete(conv, rid, self._tokens[rid])

    def _keep(self, r: Request) -> None:
        """A turn of a conversation ended: dispatch the copy of its KV to the host, kept for
        the next turn (the device pages may be reused at once, as after a swap-out)."""
        conv = self._conv.get(r.id)
        pages = self.device.slot_pages(r.id)
        tl = self.timelines[r.id]
        if not self.reuse or conv is None or pages is None or tl.finish_reason == "cancelled":
            self.switch.drop_host(r.id)
            return
        # KV exists for every token but the last generated one (never fed back)
        ended = tl.finish_time is not None
        cached = (tl.prompt_len + len(tl.output_ids) if ended else r.context_len) - 1
        if cached < 1:
            self.switch.drop_host(r.id)
            return
        try:  # only the pages not on the host already move
            host, moved = self.switch.copy_out(
                self.kv, r.id, list(pages[: pages_for(cached, self.page_size)])
            )
        except MemoryError:  # no room on the host: the next turn prefills from scratch
            return
        self.conversations.keep(conv, r.id, host, cached)
        tl.swapped_bytes += moved
        if ended:  # its tokens are all read (a stop): the entry is complete now
            self.conversations.complete(conv, r.id, self._tokens[r.id])
        budget = self.sched_config.host_pages
        if budget is not None:  # the scheduler's swaps come first
            self.conversations.evict(budget - self.scheduler.host_used)
