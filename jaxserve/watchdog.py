"""Each process of a multi-process run watches the others (`jaxserve.distributed`).

    every second: post "alive N" under jaxserve/health/<me>, read every peer's key
    peer key "failed MSG"              -> error: process 0 of 2: process 1 failed: MSG
    peer key unchanged for patience_s  -> error: process 0 of 2: process 1 stopped answering ...
    coordination service gone          -> error: ... lost the coordination service of process 0
    then os._exit(1): this process may be blocked in a collective that will never finish.

The keys live in JAX's own coordination service (its key-value store), so nothing but the
runtime JAX already started is involved. A normal exit posts "exited" first (an atexit hook
that runs before JAX's shutdown), so a process that finishes early is not taken for dead.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_HEALTH = "jaxserve/health/{}"


class Watchdog(threading.Thread):
    """Heartbeats and failure notices of the processes (module doc).

    client: the coordination service client; patience_s: how long a peer may stay silent;
    label: this process's "process I of N"."""

    def __init__(self, client, patience_s: float, label: str, period_s: float = 1.0):
        super().__init__(name="jaxserve-watchdog", daemon=True)
        import jax

        self.me, self.n = jax.process_index(), jax.process_count()
        self.patience_s, self.period_s = max(patience_s, 2 * period_s), period_s
        self.client, self.label = client, label
        self.stopped = threading.Event()

    def _post(self, value: str) -> None:
        self.client.key_value_set(_HEALTH.format(self.me), value, allow_overwrite=True)

    def run(self) -> None:
        start = time.monotonic()
        seen = {p: (None, start) for p in range(self.n) if p != self.me}
        beat = 0
        while not self.stopped.is_set():
            try:
                self._post(f"alive {beat}")
                beat += 1
                for p, (old, since) in seen.items():
                    try:
                        value = self.client.key_value_try_get(_HEALTH.format(p))
                    except Exception:  # noqa: BLE001 - not posted yet
                        value = None
                    if value is not None and value.startswith("failed"):
                        self._end(f"process {p} failed: {value[len('failed ') :]}")
                    if value == "exited" or value != old:
                        seen[p] = (value, time.monotonic())
                    elif time.monotonic() - since > self.patience_s:
                        self._end(
                            f"process {p} stopped answering for {self.patience_s:.0f} s "
                            "(killed, crashed or hung; see its output)"
                        )
            except Exception as e:  # noqa: BLE001 - the coordination service is gone
                if self.stopped.is_set():
                    return
                why = " ".join(str(e).split())[:200] or type(e).__name__
                self._end(f"lost the coordination service of process 0 ({why})")
            self.stopped.wait(self.period_s)

    def _end(self, why: str) -> None:
        if self.stopped.is_set():
            return
        print(f"error: {self.label}: {why}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)

    def announce(self, message: str) -> None:
        """This process failed: post its error line for the others, stop watching."""
        if not self.stopped.is_set():
            self.stopped.set()
            try:
                self._post(f"failed {' '.join(message.split())[:500]}")
            except Exception:  # noqa: BLE001 - the service is gone: nobody to tell
                pass

    def exit(self) -> None:
        """A normal exit: tell the others, stop beating (before JAX shuts the client down)."""
        if not self.stopped.is_set():
            self.stopped.set()
            try:
                self._post("exited")
            except Exception:  # noqa: BLE001
                pass
