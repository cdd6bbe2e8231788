"""The engine's estimate of one decode step's seconds, which sizes multi-step decode chunks.

A chunk may run k steps only if they end before the next arrival is due:
k <= (next arrival - now) / step time. The estimate is the median of the per-step times of the
last `window` decode-only calls (read to read), not a running mean: one slow call (a program's
first run, the host descheduled for a moment) would otherwise inflate a mean for many calls
and cut the chunks after it short, for no arrival. A real change of speed (a larger batch,
a longer context) moves the median within half a window. The engine (`jaxserve.readback`) and
the simulator (`jaxserve.sim.loop`) use this same estimator.
"""

from __future__ import annotations

from collections import deque

WINDOW = 5


class StepTime:
    def __init__(self, window: int = WINDOW):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._samples: deque[float] = deque(maxlen=window)

    def add(self, per_step: float) -> None:
        """One decode-only call's seconds per step."""
        self._samples.append(per_step)

    @property
    def value(self) -> float:
        """The median of the window's samples; 0.0 before the first (no estimate)."""
        s = sorted(self._samples)
        n = len(s)
        if not n:
            return 0.0
        return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
