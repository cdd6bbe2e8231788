"""Swap or drop: how a preempted request gives up its device KV, and how a drop recovers.

    swap       copy its KV pages to host (then SWAPPED); resuming copies them back
    drop       discard them (then DROPPED); resuming rebuilds them from prompt + generated
               tokens, by one of two recoveries (`recovery`):
        recompute  the base model's exact prefill
        predict    KV prediction's auxiliary model predicts the cache (only when the served
                   model predicts its prompts' cache, `predict_tokens_per_s` set)

Modes (`SchedulerConfig.preemption`):
    "recompute"  always drop, recover by recompute
    "predict"    always drop, recover by prediction
    "swap"       swap while the host budget (`host_pages`) has room, else drop (recompute)
    "auto"       the cheapest of the three by the measured costs,
                     swap       kv_bytes / swap_bandwidth
                     recompute  context_len / prefill_tokens_per_s
                     predict    context_len / predict_tokens_per_s   (when it can predict)
                 swap only while the host budget has room; a tie drops, and recomputes
"""

from __future__ import annotations

from typing import Literal

from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.request import Request, pages_for

Mode = Literal["swap", "drop"]
Recovery = Literal["recompute", "predict"]


def kv_pages(config: SchedulerConfig, request: Request) -> int:
    """Pages holding written KV: what a swap copies."""
    return pages_for(request.kv_len, config.page_size)


def swap_seconds(config: SchedulerConfig, request: Request) -> float:
    """One-way copy time of the request's KV at the measured bandwidth."""
    return kv_pages(config, request) * config.kv_bytes_per_page / config.swap_bandwidth


def recompute_seconds(config: SchedulerConfig, request: Request) -> float:
    """Time to re-prefill its context at the measured prefill throughput."""
    return request.context_len / config.prefill_tokens_per_s


def predict_seconds(config: SchedulerConfig, request: Request) -> float | None:
    """Time to re-predict its context's cache at the measured prediction throughput; None
    when the served model cannot predict."""
    if config.predict_tokens_per_s is None:
        return None
    return request.context_len / config.predict_tokens_per_s


def recovery(config: SchedulerConfig, request: Request) -> Recovery:
    """How a dropped request gets its KV back: by the mode, or under "auto" the cheaper."""
    if config.preemption == "predict":
        return "predict"
    if config.preemption == "auto":
        predict = predict_seconds(config, request)
        if predict is not None and predict < recompute_seconds(config, request):
            return "predict"
    return "recompute"


def drop_seconds(config: SchedulerConfig, request: Request) -> float:
    """Time to rebuild a dropped request's KV by its recovery."""
    if recovery(config, request) == "predict":
        return predict_seconds(config, request)
    return recompute_seconds(config, request)


def victim_mode(config: SchedulerConfig, request: Request, host_used: int) -> Mode:
    """ "swap" or "drop" for a victim, given the host pages already in use."""
    if config.preemption in ("recompute", "predict"):
        return "drop"
    need = kv_pages(config, request)
    if config.host_pages is not None and host_used + need > config.host_pages:
        return "drop"
    if config.preemption == "auto" and not (
        swap_seconds(config, request) < drop_seconds(config, request)
    ):
        return "drop"
    return "swap"
