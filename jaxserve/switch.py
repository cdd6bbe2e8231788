"""The engine's context switches: what a preempted request keeps, and how it comes back.

    swap out   copy to the host only the pages it lacks there: a request swapped in earlier
               (or continuing a kept conversation turn) still has its full pages on the host,
               unchanged since (`HostKV.prefix`), and only the pages written since move. A
               copy the host tier cannot hold (`MemoryError`, e.g. its budget) drops the
               request instead (`Scheduler.swap_failed`); it recovers like any drop
    drop       its KV is gone; it resumes by `preempt.recovery`: "recompute" (the base
               model's exact prefill over prompt + generated tokens) or "predict" (a model
               that predicts its prompts' cache, KV prediction, predicts it again)
    swap in    the host copy goes back into new pages; its full pages stay on the host
    times      each preemption's time and kind, and each resume's time, kind and cost (the
               iteration that brought it back, dispatch to read) on the request's `Timeline`

A host copy is released exactly once: when it is swapped in (all but its retained prefix),
copied out again (the prefix joins the new copy), or its request ends or is forgotten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.events import Event
from jaxserve.kvcache.host import HostKV
from jaxserve.kvcache.pages import KVPages
from jaxserve.sched import Plan, preempt

if TYPE_CHECKING:
    from jaxserve.engine import Engine


class ContextSwitch:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.config = engine.sched_config
        self.host = engine.host
        self.page_size = self.config.page_size
        self.swapped: dict[str, HostKV] = {}  # SWAPPED requests' host copies
        self.on_host: dict[str, HostKV] = {}  # resident requests: full pages valid on host
        self.recover: dict[str, preempt.Recovery] = {}  # DROPPED requests: how they resume
        self.paused: dict[str, str] = {}  # preempted, not resumed yet: how it was preempted
        self._resumed: dict[int, list[str]] = {}  # id(plan) -> requests it resumed
        self.fallbacks = 0  # swap-outs the host could not hold: dropped instead
        self.bytes_out = 0  # bytes copied device -> host by swap-outs
        self.bytes_not_copied = 0  # bytes a swap-out found valid on the host already

    # -- copies ---------------------------------------------------------------------------

    def copy_out(self, kv: KVPages, rid: str, pages: list[int]) -> tuple[HostKV, int]:
        """Dispatch the copy of `pages` (the request's KV, in order) to the host, but for
        the pages it holds there already; returns the whole copy and the bytes moved.
        Raises `MemoryError` (nothing copied, the host's pages of it released) when the
        host tier cannot hold it."""
        prior = self.on_host.pop(rid, None)
        have = prior.num_pages if prior is not None else 0
        if have > len(pages):
            raise AssertionError(f"{rid}: {have} pages on the host, {len(pages)} to copy")
        try:
            new = self.host.swap_out(kv, pages[have:]) if len(pages) > have else None
        except MemoryError:
            if prior is not None:
                prior.release()
            raise
        moved = new.nbytes if new is not None else 0
        copy = HostKV.join(prior, new)
        self.bytes_out += moved
        self.bytes_not_copied += copy.nbytes - moved
        return copy, moved

    def retain(self, rid: str, host: HostKV, tokens: int) -> None:
        """`host` has been copied back into the request's pages, which now hold KV for
        `tokens` tokens: keep its full pages on the host (KV is never rewritten) and release
        the rest of it."""
        self.drop_host(rid)
        full = min(tokens // self.page_size, host.num_pages)
        if full:
            self.on_host[rid] = host.prefix(full)
        host.release()

    def drop_host(self, rid: str) -> None:
        """Forget the pages of a resident request that are valid on the host."""
        copy = self.on_host.pop(rid, None)
        if copy is not None:
            copy.release()

    def forget(self, rid: str, keep_resident: bool = False) -> None:
        """The request ended or is forgotten: release whatever it holds on the host (but its
        resident pages' host copy with `keep_resident`: a kept turn may still copy out)."""
        if not keep_resident:
            self.drop_host(rid)
        copy = self.swapped.pop(rid, None)
        if copy is not None:
            copy.release()
        self.recover.pop(rid, None)
        self.paused.pop(rid, None)

    # -- one plan ---------------------------------------------------------------------------

    def dispatch(self, plan: Plan, now: float, events: list[Event]) -> list[HostKV]:
        """Dispatch the plan's swaps (no waiting), record drops and their recovery, and emit
        preempt / resume events; returns the host copies to settle once the step is read."""
        e = self.engine
        start = e.clock()
        out = []
        dropped = {r.id for r in plan.drop}
        for r, pages in plan.swap_out:
            e.device.release(r.id)
            try:
                host, moved = self.copy_out(e.kv, r.id, pages)
            except MemoryError:  # the host cannot hold it: drop it instead
                e.scheduler.swap_failed(r)
                self.fallbacks += 1
                dropped.add(r.id)
                self.recover[r.id] = preempt.recovery(self.config, r)
                continue
            self.swapped[r.id] = host
            out.append(host)
            e.account_swap(r.id, moved)
        for r in plan.drop:
            e.device.release(r.id)
            self.drop_host(r.id)
            self.recover[r.id] = preempt.recovery(self.config, r)
        swapped = {r.id for r, _ in plan.swap_out} - dropped
        for r in plan.preempted:
            tl = e.timelines[r.id]
            tl.preemptions += 1
            kind = "drop" if r.id in dropped else "swap" if r.id in swapped else "pause"
            tl.preempt_times.append(now)
            tl.preempt_kinds.append(kind)
            self.paused[r.id] = kind
            events.append(Event("preempt", r.id, now, detail=kind))
        for r, pages in plan.swap_in:
            host = self.swapped.pop(r.id)
            e.kv = self.host.swap_in(e.kv, host, pages)
            e.account_swap(r.id, host.nbytes)
            self.retain(r.id, host, r.kv_len)
        swapped_in = {r.id for r, _ in plan.swap_in}
        resumed = []
        for r in plan.batch:
            if self.paused.pop(r.id, None) is None:
                continue
            if r.id in swapped_in:
                kind = "swap"
            else:
                kind = self.recover.get(r.id, "pause")
            tl = e.timelines[r.id]
            tl.resume_times.append(now)
            tl.resume_kinds.append(kind)
            resumed.append(r.id)
            events.append(Event("resume", r.id, now, detail=kind))
        if resumed:
            self._resumed[id(plan)] = resumed
        if plan.swap_out or plan.swap_in:
            if e.sync_swaps:
                t = e.clock()
                e.kv.block_until_ready()
                for host in out:
                    host.settle()
                e.swap_wait += e.clock() - t
                for r in plan.batch:  # every request of the batch waited for them
                    e.timelines[r.id].stall_time += e.clock() - t
            e.swap_time += e.clock() - start
        return out

    def read(self, plan: Plan, elapsed: float) -> None:
        """The plan's step was read after `elapsed` seconds: the cost of each resume in it."""
        for rid in self._resumed.pop(id(plan), ()):
            tl = self.engine.timelines.get(rid)
            if tl is not None:
                tl.resume_costs.append(elapsed)

    def prefill_kind(self, rid: str) -> str:
        """How the request's prefill runs: "base" (a drop recovered by the base model's exact
        prefill, when the served model predicts its prompts' cache) or "prefill"."""
        how = self.recover.pop(rid, None)
        return "base" if how == "recompute" and self.engine.runner.can_predict else "prefill"
