"""Swap or recompute: how a preempted request gives up its device KV.

    swap       copy its KV pages to host (then SWAPPED); resuming copies them back
    recompute  discard them (then DROPPED); resuming re-prefills prompt + generated tokens

Modes (`SchedulerConfig.preemption`):
    "recompute"  always drop
    "swap"       swap while the host budget (`host_pages`) has room, else drop
    "auto"       swap if moving its KV out is cheaper than recomputing it,
                 kv_bytes / swap_bandwidth < context_len / prefill_tokens_per_s,
                 and the host budget has room; else drop
"""

from __future__ import annotations

from typing import Literal

from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.request import Request, pages_for

Mode = Literal["swap", "drop"]


def kv_pages(config: SchedulerConfig, request: Request) -> int:
    """Pages holding written KV: what a swap copies."""
    return pages_for(request.kv_len, config.page_size)


def swap_seconds(config: SchedulerConfig, request: Request) -> float:
    """One-way copy time of the request's KV at the measured bandwidth."""
    return kv_pages(config, request) * config.kv_bytes_per_page / config.swap_bandwidth


def recompute_seconds(config: SchedulerConfig, request: Request) -> float:
    """Time to re-prefill its context at the measured prefill throughput."""
    return request.context_len / config.prefill_tokens_per_s


def victim_mode(config: SchedulerConfig, request: Request, host_used: int) -> Mode:
    """ "swap" or "drop" for a victim, given the host pages already in use."""
    if config.preemption == "recompute":
        return "drop"
    need = kv_pages(config, request)
    if config.host_pages is not None and host_used + need > config.host_pages:
        return "drop"
    if config.preemption == "auto" and not (
        swap_seconds(config, request) < recompute_seconds(config, request)
    ):
        return "drop"
    return "swap"
