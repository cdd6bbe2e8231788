"""Scheduler knobs: one frozen dataclass, every field a future CLI flag.

Measured fields (`swap_bandwidth`, `prefill_tokens_per_s`, `kv_bytes_per_page`,
`prefill_table`) come from the executor: an engine profiles itself, a simulator takes them
from its cost model. Their defaults are placeholders, not measurements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

PREEMPTION_MODES = ("swap", "recompute", "auto")  # what every executor supports
# re-predict dropped requests' caches: only an engine serving KV prediction (not the simulator)
PREDICT = "predict"
QUANTUM_CHARGES = ("own", "iteration")


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    max_batch: int  # most requests computing in one iteration
    num_pages: int  # device pages, including the null page 0
    page_size: int  # tokens per page
    max_seq_len: int  # longest context the model supports
    preemption: str = "swap"  # how victims lose their KV: "swap" | "recompute" | "predict" |
    # "auto" (`jaxserve.sched.preempt`)
    host_pages: int | None = None  # host KV budget in pages (None: unbounded); beyond it, drop
    swap_bandwidth: float = 16e9  # bytes/s device<->host (measured by the executor)
    prefill_tokens_per_s: float = 1e4  # prefill throughput (measured by the executor)
    # throughput of re-predicting a dropped request's cache (KV prediction's auxiliary model,
    # measured by the executor); None: the served model cannot predict
    predict_tokens_per_s: float | None = None
    kv_bytes_per_page: int = 1 << 20  # bytes of K and V for one page, all layers
    q0: float = 0.01  # seconds, MLFQ quantum of queue 0 (queue i gets q0 * 2**i)
    num_queues: int = 8  # MLFQ levels
    promote_every: int = 1000  # iterations between starvation checks (0: never)
    starve_s: float = 3.0  # seconds without running after which a job is promoted to queue 0
    reserve_pages: int = 0  # free pages the proactive KV manager keeps (mlfq-like, srpt)
    prefetch: int = 0  # next-to-run SWAPPED jobs to swap in ahead (mlfq-like, srpt)
    prefill_table: Sequence[tuple[int, float]] | None = None  # (input_len, prefill seconds)
    # What an iteration costs each batch member's MLFQ quantum. "own": its own work, i.e. a
    # prefill its profiled first-iteration time and a decode the iteration less the profiled
    # time of the prefills that shared it; "iteration": every member the whole iteration.
    quantum_charge: str = "own"
    # Fair policies (vtc, fair_priority): a client is charged input_cost per prompt token
    # (once, when it is first prefilled) and output_cost per generated token, divided by its
    # weight (`client_weights`, default 1 each: a client of weight 2 is owed twice the service).
    input_cost: float = 1.0
    output_cost: float = 2.0  # the VTC paper's w_q = 2 w_p (decode costs more per token)
    # client -> weight (> 0); kept as a sorted tuple of (client, weight) pairs
    client_weights: Mapping[str, float] | Sequence[tuple[str, float]] | None = None
    rerank_every: int = 8  # fair_priority: iterations between re-rankings by attained service
    # fair_priority: hysteresis, in re-rank periods of a request's own service: a request of
    # the last batch is preempted at a re-ranking only for a client behind its own by more
    rerank_margin: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_batch", "page_size", "max_seq_len", "num_queues"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_pages < 2:
            raise ValueError(f"num_pages must be >= 2 (page 0 is reserved), got {self.num_pages}")
        if self.preemption not in (*PREEMPTION_MODES, PREDICT):
            raise ValueError(
                f"preemption must be one of {(*PREEMPTION_MODES, PREDICT)}, not {self.preemption!r}"
            )
        if self.predict_tokens_per_s is not None and not self.predict_tokens_per_s > 0:
            raise ValueError(f"predict_tokens_per_s must be > 0, got {self.predict_tokens_per_s}")
        if self.quantum_charge not in QUANTUM_CHARGES:
            raise ValueError(
                f"quantum_charge must be one of {QUANTUM_CHARGES}, not {self.quantum_charge!r}"
            )
        if self.host_pages is not None and self.host_pages < 0:
            raise ValueError(f"host_pages must be >= 0 or None, got {self.host_pages}")
        for name in ("swap_bandwidth", "prefill_tokens_per_s", "q0"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("kv_bytes_per_page", "promote_every", "reserve_pages", "prefetch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.starve_s < 0:
            raise ValueError(f"starve_s must be >= 0, got {self.starve_s}")
        for name in ("input_cost", "output_cost"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.input_cost == 0 and self.output_cost == 0:
            raise ValueError("input_cost and output_cost cannot both be 0 (nothing is charged)")
        if not (math.isfinite(self.rerank_margin) and self.rerank_margin >= 0):
            raise ValueError(
                f"rerank_margin must be a finite number >= 0, got {self.rerank_margin}"
            )
        if self.rerank_every < 1:
            raise ValueError(f"rerank_every must be >= 1, got {self.rerank_every}")
        if self.client_weights is not None:
            weights = dict(self.client_weights)
            for client, w in weights.items():
                if not isinstance(client, str):
                    raise ValueError(f"client_weights: client ids are strings, got {client!r}")
                if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                    raise ValueError(f"client_weights[{client!r}] must be > 0, got {w!r}")
            # a sorted tuple of pairs keeps the config frozen and hashable
            object.__setattr__(self, "client_weights", tuple(sorted(weights.items())))
        if self.prefill_table is not None:
            table = tuple(sorted((int(n), float(t)) for n, t in self.prefill_table))
            if not table or len({n for n, _ in table}) != len(table):
                raise ValueError("prefill_table needs >= 1 point and distinct input lengths")
            object.__setattr__(self, "prefill_table", table)

    @property
    def usable_pages(self) -> int:
        """Pages that can ever be owned (all but the null page)."""
        return self.num_pages - 1

    def weight(self, client: str) -> float:
        """A client's fairness weight (`client_weights`, default 1)."""
        return self._weights.get(client, 1.0)

    @cached_property
    def _weights(self) -> dict[str, float]:
        return dict(self.client_weights or ())

    def quantum(self, queue: int) -> float:
        """MLFQ quantum of `queue`, seconds."""
        return self.q0 * 2**queue

    def charges(
        self, iteration_time: float, prefill_lens: Sequence[int], num_decode: int
    ) -> tuple[list[float], float]:
        """Quantum charges for one iteration: (per prefill, in order; each decode).

        With "own", a prefill is charged its profiled first-iteration time (at most the
        iteration) and a decode what is left once the prefills' profiled times are taken out,
        so a short job is not demoted for other jobs' prompts it happened to share an
        iteration with."""
        if self.quantum_charge == "iteration" or not prefill_lens:
            return [iteration_time] * len(prefill_lens), iteration_time
        own = [min(self.prefill_seconds(n), iteration_time) for n in prefill_lens]
        return own, max(iteration_time - sum(own), 0.0) if num_decode else 0.0

    def prefill_seconds(self, input_len: int) -> float:
        """First-iteration time of a prompt: `prefill_table` interpolated linearly (and
        extrapolated from its end segments, floored at 0); without a table,
        input_len / prefill_tokens_per_s."""
        table = self.prefill_table
        if table is None:
            return input_len / self.prefill_tokens_per_s
        if len(table) == 1:
            n0, t0 = table[0]
            return t0 * input_len / n0 if n0 else t0
        k = 1
        while k < len(table) - 1 and table[k][0] < input_len:
            k += 1
        (n0, t0), (n1, t1) = table[k - 1], table[k]
        return max(0.0, t0 + (t1 - t0) * (input_len - n0) / (n1 - n0))
