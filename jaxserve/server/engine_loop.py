"""The engine in a thread of its own, fed by the asyncio event loop of the HTTP server.

    event loop (handlers)                       engine thread (owns the Engine)
    ---------------------                       --------------------------------
    submit(GenRequest) -> Handle ---inbox---->  engine.submit(...)     (a batch: by priority)
    cancel(id)         ------------inbox---->  engine.cancel(id)      (pages freed)
                                                events = engine.step() (never on the event loop)
    Handle.queue  <--call_soon_threadsafe----  one callback per step with all its events

The Engine is not thread-safe; only the engine thread touches it. Admission is bounded:
`submit` raises `Overloaded` once `max_inflight` requests are in flight (the HTTP layer answers
429), so nothing queues without end. Every handle gets exactly one terminal event ("finish" or
"reject"), whatever happens: a cancel, an engine error, or shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable

from jaxserve.engine import Engine, Event
from jaxserve.server.metrics import ServerMetrics
from jaxserve.server.protocol import GenRequest

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The admission queue is full."""


class Unavailable(Exception):
    """The engine is stopping or has failed."""


@dataclasses.dataclass
class Handle:
    """The event-loop side of one request."""

    id: str
    request: GenRequest
    queue: asyncio.Queue  # Events for this request, ending with a "finish" or "reject"
    done: bool = False  # its terminal event was delivered
    cached_tokens: int = 0  # prompt tokens started from kept KV (set by the engine thread)


@dataclasses.dataclass
class _Submit:
    handle: Handle


@dataclasses.dataclass
class _Cancel:
    request_id: str


class EngineLoop:
    def __init__(
        self,
        engine: Engine,
        metrics: ServerMetrics,
        max_inflight: int = 256,
        max_chunk_s: float | None = None,
    ):
        """`max_chunk_s`: the longest a multi-step decode call may run (None: as long as the
        engine allows). A request that arrives while one runs is scheduled after it (and
        after the call already queued behind it), so this bounds what an arrival waits."""
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if max_chunk_s is not None and not max_chunk_s >= 0:
            raise ValueError(f"max_chunk_s must be >= 0, got {max_chunk_s}")
        self.max_chunk_s = max_chunk_s
        self.engine = engine
        self.metrics = metrics
        self.max_inflight = max_inflight
        metrics.queue_limit.set(max_inflight)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._handles: dict[str, Handle] = {}  # event-loop side: requests in flight
        self._live: set[str] = set()  # engine-thread side: submitted, not ended
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: str | None = None  # the engine thread's failure, if it failed
        # across processes (`jaxserve.server.replicas`): shares each drain's commands with
        # the other processes' engines before they reach this one
        self.on_commands: Callable[[list], None] | None = None
        # the engine clock on time.perf_counter's scale: perf_counter() = clock_offset + now()
        self.clock_offset = time.perf_counter() - engine.now()

    # -- event loop side --------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="jaxserve-engine", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return (
            self.error is None
            and self._thread is not None
            and self._thread.is_alive()
            and not self._stop.is_set()
        )

    @property
    def inflight(self) -> int:
        return len(self._handles)

    def submit(self, request: GenRequest) -> Handle:
        """Admit a request (event loop thread). Raises Overloaded or Unavailable."""
        if not self.healthy:
            raise Unavailable(self.error or "the engine is not running")
        if len(self._handles) >= self.max_inflight:
            raise Overloaded(
                f"{len(self._handles)} requests in flight, the limit is {self.max_inflight}"
            )
        rid = f"{'chatcmpl' if request.chat else 'cmpl'}-{next(self._ids)}"
        handle = Handle(rid, request, asyncio.Queue())
        self._handles[rid] = handle
        self.metrics.inflight.set(len(self._handles))
        self._inbox.put(_Submit(handle))
        return handle

    def cancel(self, request_id: str) -> None:
        """Cancel a request (any thread); its terminal event follows. No-op once it ended."""
        self._inbox.put(_Cancel(request_id))

    def _deliver(self, batch: list[Event]) -> None:
        """Event loop: hand one step's events to their requests."""
        for e in batch:
            handle = self._handles.get(e.request_id)
            if handle is None:
                continue
            handle.queue.put_nowait(e)
            if e.kind in ("finish", "reject"):
                handle.done = True
                del self._handles[e.request_id]
        self.metrics.inflight.set(len(self._handles))

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every request still in flight and end the engine thread."""
        self._stop.set()
        self._inbox.put(None)  # wake it
        if self._thread is not None:
            self._thread.join(timeout)

    # -- engine thread ----------------------------------------------------------------------

    def _post(self, events: list[Event]) -> None:
        if events and self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._deliver, events)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stop.is_set():
                out: list[Event] = []
                self._drain(block=not engine.has_work, out=out)
                stepped = False
                if engine.has_work:
                    if self.max_chunk_s is not None:  # as if a request were due then
                        engine.next_arrival = engine.now() + self.max_chunk_s
                    out += engine.step()
                    stepped = True
                for e in out:
                    if e.kind in ("finish", "reject"):
                        self._live.discard(e.request_id)
                self.metrics.observe(engine, out, stepped)
                for e in out:  # the record travels with its terminal event from now on
                    if e.kind in ("finish", "reject") and e.request_id in engine.timelines:
                        e.record = engine.timelines[e.request_id]
                        engine.release(e.request_id)
                self._post(out)
                # hand the GIL to the event loop, which has this step's tokens to send;
                # otherwise it may wait a whole switch interval (5 ms) behind the next step
                time.sleep(0)
            out = []
            self._drain(block=False, out=out)
            for rid in list(self._live):
                out.append(self._cancel_now(rid, "cancelled"))
            self.metrics.observe(engine, out, stepped=False)
            self._post(out)
        except Exception:
            self.error = "engine failure: " + traceback.format_exc(limit=4).strip()
            log.error(self.error)
            self._fail_all()

    def _drain(self, block: bool, out: list[Event]) -> None:
        """Take every waiting command (waiting a little for one when idle); submissions
        that arrive together go to the engine in priority order (stable: ties keep their
        order), so they arrive in that order for every policy."""
        cmds = []
        try:
            cmds.append(self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait())
            while True:
                cmds.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        submits = sorted(
            (c for c in cmds if isinstance(c, _Submit)), key=lambda c: c.handle.request.priority
        )
        if self.on_commands is not None:
            self.on_commands(submits + [c for c in cmds if isinstance(c, _Cancel)])
        for c in submits:
            out += self._submit_now(c.handle)
        for c in cmds:
            if isinstance(c, _Cancel) and c.request_id in self._live:
                out.append(self._cancel_now(c.request_id, "cancelled"))

    def _submit_now(self, handle: Handle) -> list[Event]:
        req = handle.request
        reused = self.engine.conversations.tokens_reused
        try:
            self.engine.submit(
                req.prompt_ids,
                req.params,
                request_id=handle.id,
                client=req.user,
                priority=req.priority,
                output_len=req.trace_output_len,
                stop_at_output_len=req.trace_output_len is not None,
                conversation=req.conversation,
            )
        except (ValueError, TypeError) as e:  # validation should have caught it
            self.metrics.requests.labels(outcome="invalid").inc()
            return [Event("reject", handle.id, self.engine.now(), detail=f"invalid: {e}")]
        self._live.add(handle.id)
        # read by the event loop only after this request's first event, posted later
        handle.cached_tokens = self.engine.conversations.tokens_reused - reused
        return []

    def _cancel_now(self, rid: str, reason: str) -> Event:
        """Cancel in the engine; the returned "finish" event goes through `metrics.observe`."""
        self.engine.cancel(rid)
        self._live.discard(rid)
        return Event("finish", rid, self.engine.now(), detail=reason)

    def _fail_all(self) -> None:
        out = []
        for rid in list(self._live):
            try:
                self.engine.cancel(rid)
            except Exception:
                pass
            out.append(Event("finish", rid, 0.0, detail="error"))
        self._live.clear()
        self._post(out)
        # requests still in the inbox were never submitted
        try:
            while True:
                c = self._inbox.get_nowait()
                if isinstance(c, _Submit):
                    self._post([Event("reject", c.handle.id, 0.0, detail="error: engine failed")])
        except queue.Empty:
            pass
