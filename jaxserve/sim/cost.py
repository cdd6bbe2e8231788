"""Cost models: seconds of device work for one plan, in place of running a model.

    iteration_time(plan, steps) = swap time of its pages + compute time of its batch

Every cost model here answers `iteration_time(plan, steps)` (the simulator's contract) from
the plan's shape, read before `Scheduler.commit` (prefill lengths = context_len, decode rows
at their current context):

    LinearCost      a + b * rows + b_prefill * prompt tokens + c * context tokens read; the
                    hand-set model of the scheduler tests and `scripts/sim_policies.py`
    CalibratedCost  fitted from the engine's own profile.json (`calibrated.py`)
    RooflineCost    accelerator specs + model shape + parallelism (`analytical.py`)
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxserve.sched.plan import Plan


def pow2(n: int, lo: int = 1) -> int:
    """Smallest power of two >= max(n, lo) (the engine's shape buckets)."""
    n = max(n, lo, 1)
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class LinearCost:
    """Iteration time = a + b * decode rows + b_prefill * prefill tokens
    + c * context tokens the decode rows attend to + swapped bytes / swap_bandwidth
    (decode terms once per decode step)."""

    a: float = 0.01  # seconds per iteration (weights read, launch overhead)
    b: float = 1e-4  # seconds per decode row (one token computed)
    swap_bandwidth: float | None = None  # bytes/s; None: swaps cost nothing
    kv_bytes_per_page: int = 0  # bytes per page moved by a swap
    b_prefill: float | None = None  # seconds per prefill token; None: b
    c: float = 0.0  # seconds per context token a decode row reads (its KV cache)

    def iteration_time(self, plan: Plan, steps: int = 1) -> float:
        if not plan.batch:
            t = 0.0
        else:
            prefill_tokens = sum(r.context_len for r in plan.prefill)
            per_prefill = self.b if self.b_prefill is None else self.b_prefill
            n = len(plan.decode)
            ctx = sum(r.context_len for r in plan.decode)
            # step j reads one more token per row than step j-1
            decode = steps * (self.b * n + self.c * ctx) + self.c * n * steps * (steps - 1) / 2
            t = self.a * steps + per_prefill * prefill_tokens + decode
        return t + self.swap_time(plan.swap_in_pages + plan.swap_out_pages)

    def swap_time(self, num_pages: int) -> float:
        """One copy of `num_pages` pages, one way."""
        if not self.swap_bandwidth:
            return 0.0
        return num_pages * self.kv_bytes_per_page / self.swap_bandwidth
