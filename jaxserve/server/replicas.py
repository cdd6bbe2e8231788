"""The HTTP server across processes: process 0 serves HTTP, every process runs the engine.

    process 0:  handlers -> EngineLoop inbox -> drain -> tick(clock, fingerprint, commands)
                                                      -> the commands -> engine.step()
    process k:  follow(engine):                          tick -> the same commands
                                                      -> the same engine.step()

A drain's commands (the submissions in the order the engine gets them, then the cancels)
travel as JSON in the payload of that iteration's tick (`multihost.ReplicatedClock`), before
any engine sees them: every engine submits them at the same clock reading, so every scheduler
plans the same step and every process dispatches the same device calls. The tick also
carries the fingerprint of the previous step's events, so a replica that diverges stops
with an error naming the iteration. Shutdown is one last tick whose payload is "stop".

When the server is idle, process 0 drains (and ticks) every 50 ms: the others wait in the
key-value store meanwhile. If process 0's engine thread fails, the others keep waiting for a
tick until process 0 exits (the watchdog then ends them).
"""

from __future__ import annotations

import dataclasses
import json

from jaxserve import multihost
from jaxserve.engine import Engine
from jaxserve.sampling import SamplingParams
from jaxserve.server.engine_loop import EngineLoop, _Cancel, _Submit

STOP = "stop"


def encode(commands: list) -> str:
    """One drain's commands as one line ("" for none)."""
    out = []
    for c in commands:
        if isinstance(c, _Submit):
            r = c.handle.request
            out.append(
                {
                    "id": c.handle.id,
                    "prompt_ids": r.prompt_ids,
                    "params": dataclasses.asdict(r.params),
                    "client": r.user,
                    "priority": r.priority,
                    "output_len": r.trace_output_len,
                    "conversation": r.conversation,
                }
            )
        elif isinstance(c, _Cancel):
            out.append({"cancel": c.request_id})
    return json.dumps(out, separators=(",", ":")) if out else ""


class Leader:
    """Process 0's side, hooked into its `EngineLoop`: each drain's commands go out in a
    tick (with the fingerprint of the step before) before this engine gets them."""

    def __init__(self, loop: EngineLoop):
        engine = loop.engine
        if not isinstance(engine.clock, multihost.ReplicatedClock):
            raise TypeError("serving across processes needs clock=ReplicatedClock()")
        self.clock = engine.clock
        self.fingerprint = 0
        step = engine.step

        def step_and_fingerprint():
            events = step()
            self.fingerprint = multihost.events_fingerprint(events)
            return events

        engine.step = step_and_fingerprint
        loop.on_commands = self
        # the engine clock on perf_counter's scale (the clock started before warm-up)
        loop.clock_offset = self.clock.origin + self.clock() - engine.now()

    def __call__(self, commands: list) -> None:
        self.clock.tick(self.fingerprint, encode(commands))
        self.fingerprint = 0

    def end(self) -> None:
        """After the engine thread has stopped: the others stop too."""
        self.clock.tick(self.fingerprint, STOP)


def follow(engine: Engine, max_chunk_s: float | None) -> int:
    """Process k > 0: do what process 0's `EngineLoop` does to its engine, tick by tick,
    until process 0 stops. Returns the iterations that stepped the engine."""
    clock = engine.clock
    live: set[str] = set()
    fingerprint, steps = 0, 0
    while (payload := clock.tick(fingerprint)) != STOP:
        fingerprint = 0
        ended = []
        for c in json.loads(payload) if payload else []:
            if "cancel" in c:
                if c["cancel"] in live:
                    engine.cancel(c["cancel"])
                    ended.append(c["cancel"])
                continue
            try:
                engine.submit(
                    c["prompt_ids"],
                    SamplingParams(**c["params"]),
                    request_id=c["id"],
                    client=c["client"],
                    priority=c["priority"],
                    output_len=c["output_len"],
                    stop_at_output_len=c["output_len"] is not None,
                    conversation=c["conversation"],
                )
                live.add(c["id"])
            except (ValueError, TypeError):  # process 0 rejected it the same way
                pass
        if engine.has_work:
            if max_chunk_s is not None:
                engine.next_arrival = engine.now() + max_chunk_s
            events = engine.step()
            steps += 1
            fingerprint = multihost.events_fingerprint(events)
            ended += [e.request_id for e in events if e.kind in ("finish", "reject")]
        for rid in ended:  # as process 0 forgets them
            live.discard(rid)
            if rid in engine.timelines:
                engine.release(rid)
    return steps
