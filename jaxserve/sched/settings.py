"""An experiment's settings -> `SchedulerConfig`: one builder for the engine and the simulator.

    settings (flags: batch, pages, MLFQ, KV manager, fair-policy costs, ...)
      + what the executor measured (decode and prefill times, swap bandwidth; a profile for
        the engine, the cost model for the simulator) + the trace's client weights
      -> config_from_settings(...) -> SchedulerConfig

`jaxserve.serve.scheduler_config` and `jaxserve.sim.run.scheduler_config` both call it, so a
field the engine's scheduler gets from its settings reaches the simulated one too. Pure
Python (no JAX), like the rest of `jaxserve.sched`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from jaxserve.sched.config import PREDICT, SchedulerConfig

# FastSwitch's ablation, `--switch` -> how the engine moves KV: the host tier's transfers
# (one per page, per contiguous run, or one gathered block), whether every swap is waited
# for, and multi-turn reuse; the simulator prices the same modes (`jaxserve.sim.switch`)
SWITCHES = {
    "baseline": {"swap_transfer": "pages", "sync_swaps": True, "reuse": False},
    "block_groups": {"swap_transfer": "groups", "sync_swaps": True, "reuse": False},
    "async": {"swap_transfer": "groups", "sync_swaps": False, "reuse": False},
    "reuse": {"swap_transfer": "groups", "sync_swaps": False, "reuse": True},
    "all": {"swap_transfer": "gather", "sync_swaps": False, "reuse": True},
}


class SchedulerSettings(Protocol):
    """The settings fields the builder reads (`ServeSettings`, `SimSettings`)."""

    max_batch: int
    page_size: int
    preemption: str
    host_pages: int | None  # None: 4x the device pool
    q0: float | None  # None: q0_iterations decode iterations at max_batch
    q0_iterations: float
    num_queues: int
    quantum_charge: str
    promote_every: int
    starve_s: float
    reserve_pages: int
    prefetch: int
    input_cost: float
    output_cost: float
    rerank_every: int
    rerank_margin: float


def config_from_settings(
    s: SchedulerSettings,
    *,
    num_pages: int,
    max_seq_len: int,
    decode_seconds: float,
    swap_bandwidth: float,
    prefill_tokens_per_s: float,
    kv_bytes_per_page: int,
    prefill_table: Sequence[tuple[int, float]] | None = None,
    predict_tokens_per_s: float | None = None,
    client_weights: Mapping[str, float] | None = None,
) -> SchedulerConfig:
    """The scheduler's config for one run. `decode_seconds`: one decode iteration at
    max_batch (q0 is `q0_iterations` of them unless `q0` is set); `predict_tokens_per_s`:
    None where the model cannot re-predict a cache, so `predict` preemption runs as
    `recompute`; `client_weights`: the trace's (empty or None: every client weighs 1)."""
    q0 = s.q0 if s.q0 is not None else s.q0_iterations * decode_seconds
    preemption = s.preemption
    if preemption == PREDICT and predict_tokens_per_s is None:
        preemption = "recompute"
    return SchedulerConfig(
        max_batch=s.max_batch,
        num_pages=num_pages,
        page_size=s.page_size,
        max_seq_len=max_seq_len,
        preemption=preemption,
        predict_tokens_per_s=predict_tokens_per_s,
        host_pages=s.host_pages if s.host_pages is not None else 4 * num_pages,
        swap_bandwidth=swap_bandwidth,
        prefill_tokens_per_s=prefill_tokens_per_s,
        kv_bytes_per_page=kv_bytes_per_page,
        q0=q0,
        num_queues=s.num_queues,
        quantum_charge=s.quantum_charge,
        promote_every=s.promote_every,
        starve_s=s.starve_s,
        reserve_pages=s.reserve_pages,
        prefetch=s.prefetch,
        prefill_table=list(prefill_table) if prefill_table is not None else None,
        input_cost=s.input_cost,
        output_cost=s.output_cost,
        client_weights=client_weights or None,
        rerank_every=s.rerank_every,
        rerank_margin=s.rerank_margin,
    )
