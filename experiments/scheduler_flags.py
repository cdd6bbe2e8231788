"""The flags `serve` and `simulate` share: arrivals, pages, and every policy's knobs.

Both command lines drive the same `Scheduler`, so a knob means the same thing in each and is
defined here once (same name, default and help). What differs between them (the model, the
batch, the rates, the lengths' defaults, the output directory) stays in each command.
`settings()` gives the fields of `ServeSettings` / `SimSettings` these flags fill.
"""

from __future__ import annotations

import math

from absl import app, flags

from jaxserve.sched.config import QUANTUM_CHARGES

ARRIVAL = flags.DEFINE_enum("arrival", "poisson", ["poisson", "gamma", "burst"], "Arrivals.")
CV = flags.DEFINE_float("cv", 1.0, "Coefficient of variation of Gamma inter-arrivals.")
PAGE_SIZE = flags.DEFINE_integer("page_size", 16, "Tokens per KV page.", lower_bound=1)
HOST_PAGES = flags.DEFINE_integer("host_pages", None, "Host KV budget in pages (4x device).")
Q0 = flags.DEFINE_float("q0", None, "MLFQ top quantum, s (overrides --q0_iterations).")
Q0_ITERATIONS = flags.DEFINE_float(
    "q0_iterations", 8.0, "Default q0 = this many decode iterations at --max_batch."
)
NUM_QUEUES = flags.DEFINE_integer("num_queues", 8, "MLFQ queues.", lower_bound=1)
QUANTUM_CHARGE = flags.DEFINE_enum(
    "quantum_charge",
    "own",
    list(QUANTUM_CHARGES),
    "MLFQ quantum charge per batch member: its own prefill or decode share, or the iteration.",
)
PROMOTE_EVERY = flags.DEFINE_integer(
    "promote_every", 1000, "Starvation check period, iterations (0: never).", lower_bound=0
)
STARVE_S = flags.DEFINE_float(
    "starve_s", 3.0, "Promote jobs waiting longer than this, s.", lower_bound=0.0
)
RESERVE_PAGES = flags.DEFINE_integer(
    "reserve_pages", 0, "Free pages the KV manager keeps.", lower_bound=0
)
PREFETCH = flags.DEFINE_integer(
    "prefetch", 2, "Swapped jobs to prefetch ahead of running.", lower_bound=0
)
INPUT_COST = flags.DEFINE_float(
    "input_cost", 1.0, "vtc / fair_priority and service metrics: charge per prompt token."
)
OUTPUT_COST = flags.DEFINE_float(
    "output_cost", 2.0, "vtc / fair_priority and service metrics: charge per generated token."
)
RERANK_EVERY = flags.DEFINE_integer(
    "rerank_every",
    8,
    "fair_priority: iterations between re-rankings by client service.",
    lower_bound=1,
)
RERANK_MARGIN = flags.DEFINE_float(
    "rerank_margin",
    1.0,
    "fair_priority: a request of the last batch is preempted at a re-ranking only for a "
    "client behind its own by more than this many re-rank periods of its own service "
    "(0: no hysteresis).",
    lower_bound=0.0,
)
CLOSED_LOOP = flags.DEFINE_bool(
    "closed_loop",
    True,
    "Release a conversation's next turn when the previous one ended plus the think time "
    "(else every turn at its trace arrival).",
)

ALL = (
    ARRIVAL,
    CV,
    PAGE_SIZE,
    HOST_PAGES,
    Q0,
    Q0_ITERATIONS,
    NUM_QUEUES,
    QUANTUM_CHARGE,
    PROMOTE_EVERY,
    STARVE_S,
    RESERVE_PAGES,
    PREFETCH,
    INPUT_COST,
    OUTPUT_COST,
    RERANK_EVERY,
    RERANK_MARGIN,
    CLOSED_LOOP,
)


def check() -> None:
    """What a flag's type and bounds cannot say; raises app.UsageError naming the flag."""
    if ARRIVAL.value == "gamma" and not CV.value > 0:
        raise app.UsageError(f"--cv must be > 0 with --arrival=gamma, got {CV.value}")
    for flag in (Q0, Q0_ITERATIONS):
        if flag.value is not None and not (math.isfinite(flag.value) and flag.value > 0):
            raise app.UsageError(f"--{flag.name} must be a finite number > 0, got {flag.value}")
    if not math.isfinite(RERANK_MARGIN.value):
        raise app.UsageError(f"--rerank_margin must be finite, got {RERANK_MARGIN.value}")
    if HOST_PAGES.value is not None and HOST_PAGES.value < 0:
        raise app.UsageError(f"--host_pages must be >= 0, got {HOST_PAGES.value}")
    for flag in (INPUT_COST, OUTPUT_COST):
        if not (math.isfinite(flag.value) and flag.value >= 0):
            raise app.UsageError(f"--{flag.name} must be a finite number >= 0, got {flag.value}")
    if INPUT_COST.value == 0 and OUTPUT_COST.value == 0:
        raise app.UsageError("--input_cost and --output_cost cannot both be 0")


def settings() -> dict:
    """These flags' values under their settings-field names (the same as the flags')."""
    return {h.name: h.value for h in ALL}
