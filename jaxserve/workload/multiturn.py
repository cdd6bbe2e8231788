"""multiturn_synth: many clients in multi-turn conversations, for fairness experiments.

    clients   "heavy": heavy_share of the conversation rate, weight heavy_weight (default:
              half the rate and weight 2, so it asks for more than the fair share it pays for)
              "light<i>" (i < light_clients - on_off) and "onoff<i>" (i < on_off): the rest of
              the rate split equally, weight light_weight; an on/off client starts
              conversations only during on periods (on_s seconds on, off_s off, from 0)
    each      `conversation_workload` at its rate: turns drawn from `turns`, exponential
              think time (mean think_time) between a turn's arrival and the next one's,
              prompts holding the whole history (earlier messages and replies)
    merged    sorted by arrival, the first num_requests requests (a conversation cut short
              keeps its first turns); ids "<client>-c<k>-t<turn>", conversation
              "<client>-c<k>", every request carrying its client's weight

`rate` is the rate at which conversations start, all clients together. Arrival times are
open-loop; a driver that releases a turn only after the previous one finished reads the think
time as the arrival gap (`next_turn_release`). A conversation ends before a turn whose prompt
and reply would exceed max_context_len (default: max_prompt_len + max_output_len when both are
given).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from jaxserve.workload.conversations import conversation_workload
from jaxserve.workload.lengths import ShareGPTSynth
from jaxserve.workload.registry import WorkloadSpec, register_source
from jaxserve.workload.request import TraceRequest, WorkloadError

DEFAULTS = {
    "light_clients": 4,
    "heavy_share": 0.5,
    "heavy_weight": 2.0,
    "light_weight": 1.0,
    "on_off": 1,
    "on_s": 5.0,
    "off_s": 5.0,
    "turns": (2, 4),
    "think_time": 1.0,
    "max_context_len": None,
}


def _number(name: str, v, *, positive: bool = False, lo: float = 0.0, hi: float = math.inf):
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or not (lo <= v <= hi) or (positive and v <= 0):
        want = "> 0" if positive else f"in [{lo:g}, {hi:g}]"
        raise WorkloadError(f"multiturn_synth: {name} must be a number {want}, got {v!r}")
    return float(v)


def _count(name: str, v, lo: int = 0) -> int:
    if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo):
        raise WorkloadError(f"multiturn_synth: {name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def client_plan(params: dict) -> list[tuple[str, float, float, bool]]:
    """(client, share of the conversation rate, weight, on/off) for every client."""
    light = _count("light_clients", params["light_clients"])
    on_off = _count("on_off", params["on_off"])
    if on_off > light:
        raise WorkloadError(f"multiturn_synth: on_off={on_off} > light_clients={light}")
    share = _number("heavy_share", params["heavy_share"], hi=1.0)
    if light == 0 and share < 1.0:
        raise WorkloadError("multiturn_synth: heavy_share must be 1 with no light clients")
    if light and share == 1.0:
        raise WorkloadError("multiturn_synth: heavy_share=1 leaves the light clients nothing")
    heavy_w = _number("heavy_weight", params["heavy_weight"], positive=True)
    light_w = _number("light_weight", params["light_weight"], positive=True)
    out = [("heavy", share, heavy_w, False)] if share > 0 else []
    names = [f"light{i}" for i in range(light - on_off)] + [f"onoff{i}" for i in range(on_off)]
    for name in names:
        out.append((name, (1 - share) / light, light_w, name.startswith("onoff")))
    return out


def on_off_time(t: np.ndarray, on_s: float, off_s: float) -> np.ndarray:
    """Map time counted in on periods to wall time: every on_s seconds, off_s are skipped."""
    return t + np.floor(t / on_s) * off_s


def multiturn_workload(
    num_requests: int,
    rate: float,
    *,
    seed: int = 0,
    scale: float = 1.0,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
    arrival: str = "poisson",
    cv: float = 1.0,
    **params,
) -> list[TraceRequest]:
    """The multiturn_synth trace (module docstring); `params` override `DEFAULTS`."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise WorkloadError(
            f"multiturn_synth: unknown parameter(s) {unknown}; allowed: {sorted(DEFAULTS)}"
        )
    p = DEFAULTS | params
    on_s = _number("on_s", p["on_s"], positive=True)
    off_s = _number("off_s", p["off_s"])
    think = _number("think_time", p["think_time"])
    turns = tuple(p["turns"]) if isinstance(p["turns"], (list, tuple)) else p["turns"]
    limit = p["max_context_len"]
    if limit is None and max_prompt_len is not None and max_output_len is not None:
        limit = max_prompt_len + max_output_len
    if limit is not None:
        limit = _count("max_context_len", limit, lo=2)
    lengths = ShareGPTSynth(
        scale=scale, max_prompt_len=max_prompt_len, max_output_len=max_output_len
    )
    out: list[TraceRequest] = []
    for i, (client, share, weight, flaps) in enumerate(client_plan(p)):
        # enough conversations that this client's share of num_requests is always covered
        count = max(1, math.ceil(num_requests * share))
        sub_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        convs = conversation_workload(
            count,
            turns,
            rate * share,
            think,
            lengths=lengths,
            seed=sub_seed,
            arrival=arrival,
            cv=cv,
            max_context_len=limit,
            client=client,
        )
        if flaps:  # shift each conversation so that it starts in an on period
            first = {r.conversation: r.arrival for r in convs if r.turn == 0}
            starts = np.asarray(list(first.values()))
            shift = dict(zip(first, on_off_time(starts, on_s, off_s) - starts))
        for r in convs:
            k = r.conversation.removeprefix("c")
            out.append(
                dataclasses.replace(
                    r,
                    id=f"{client}-c{k}-t{r.turn}",
                    conversation=f"{client}-c{k}",
                    arrival=r.arrival + (float(shift[r.conversation]) if flaps else 0.0),
                    weight=weight,
                )
            )
    out.sort(key=lambda r: (r.arrival, r.turn, r.id))
    return out[:num_requests]


@register_source
class MultiturnSource:
    """ "multiturn_synth": num_requests requests of multi-turn conversations from one heavy
    client, several light ones and on/off ones (`multiturn.py`); `rate` is conversations/s.
    `length_params` takes light_clients, heavy_share, heavy_weight, light_weight, on_off,
    on_s, off_s, turns, think_time, max_context_len."""

    name = "multiturn_synth"

    def matches(self, spec: str) -> bool:
        return spec == self.name

    def build(self, spec: str, w: WorkloadSpec) -> list[TraceRequest]:
        return multiturn_workload(
            w.require_count(spec),
            w.require_rate(spec),
            seed=w.seed,
            scale=w.scale,
            max_prompt_len=w.max_prompt_len,
            max_output_len=w.max_output_len,
            arrival=w.arrival,
            cv=w.cv,
            **(w.length_params or {}),
        )
