"""Workload sources by name: a new workload is one module that registers a `Source`.

    make_workload(name_or_path, rate, num_requests, seed, ...)
        -> WorkloadSpec (what was asked for)
        -> the registered Source whose `matches(name_or_path)` is true
        -> Source.build(name_or_path, spec) -> list[TraceRequest] sorted by arrival

Built-in sources: the synthetic length distributions by name ("sharegpt_synth",
"alpaca_synth", `lengths.py`), ShareGPT / Alpaca files "*.json" (`datasets.py`), traces
"*.jsonl" (`trace.py`) and multi-turn "conversations" (`conversations.py`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Protocol

import numpy as np

from jaxserve.workload.arrivals import ARRIVALS
from jaxserve.workload.request import Tokenize, TraceRequest, WorkloadError


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """Everything `make_workload` was given; each source uses the fields that apply to it."""

    rate: float | None  # requests/s (math.inf: everything at 0); None: a trace's own times
    num_requests: int | None  # None: a file's every entry
    seed: int = 0  # arrivals and lengths use independent streams spawned from it
    arrival: str = "poisson"  # "poisson" | "gamma" (cv) | "burst" (burst_size)
    cv: float = 1.0
    burst_size: int = 4
    scale: float = 1.0  # multiplies synthetic lengths
    max_prompt_len: int | None = None
    max_output_len: int | None = None
    tokenize: Tokenize | None = None  # token counts of text (default: whitespace words)
    client: str = "default"  # the client of every request
    length_params: dict | None = None  # other fields of a synthetic length distribution

    def streams(self) -> tuple[np.random.Generator, np.random.Generator]:
        """(arrival rng, length rng): independent, so a rate sweep with one seed serves the
        same requests at every rate (common random numbers), only spaced differently."""
        arr, lens = np.random.SeedSequence(self.seed).spawn(2)
        return np.random.default_rng(arr), np.random.default_rng(lens)

    def require_rate(self, spec: str) -> float:
        if self.rate is None:
            raise WorkloadError(f"rate is required for workload {spec!r}")
        if self.arrival not in ARRIVALS:
            raise WorkloadError(f"arrival must be one of {ARRIVALS}, got {self.arrival!r}")
        return self.rate

    def require_count(self, spec: str) -> int:
        if self.num_requests is None:
            raise WorkloadError(f"num_requests is required for workload {spec!r}")
        return self.num_requests


class Source(Protocol):
    name: str  # a workload name, or a file pattern such as "*.json" (what the registry lists)

    def matches(self, spec: str) -> bool: ...

    def build(self, spec: str, w: WorkloadSpec) -> list[TraceRequest]: ...


SOURCES: dict[str, Source] = {}


def register_source(source):
    """Register a Source instance, or a class with a no-argument constructor (as a decorator);
    returns its argument. A later registration under the same name replaces the earlier."""
    SOURCES[source.name] = source() if isinstance(source, type) else source
    return source


def known_workloads() -> list[str]:
    return list(SOURCES)


def named_workloads() -> list[str]:
    """The sources asked for by name (the others match file patterns such as "*.json")."""
    return [name for name in SOURCES if not name.startswith("*")]


def find_source(spec: str) -> Source | None:
    return next((s for s in SOURCES.values() if s.matches(spec)), None)


def _is_count(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0


def make_workload(
    name_or_path: str | os.PathLike,
    rate: float | None,
    num_requests: int | None,
    seed: int = 0,
    *,
    arrival: str = "poisson",
    cv: float = 1.0,
    burst_size: int = 4,
    scale: float = 1.0,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
    tokenize: Tokenize | None = None,
    client: str = "default",
    length_params: dict | None = None,
) -> list[TraceRequest]:
    """A workload by name or file, sorted by arrival (see `WorkloadSpec` for the arguments).

    name_or_path:
      "sharegpt_synth" / "alpaca_synth": synthetic lengths (see the classes) with scale and
        clips; needs rate and num_requests.
      "*.json": a ShareGPT or Alpaca file (told apart by layout); num_requests entries drawn at
        random (all usable entries when None); lengths from the text by `tokenize`; prompts over
        max_prompt_len skipped, outputs clipped to max_output_len; `scale` does not apply.
      "*.jsonl": a trace (`read_trace`); the first num_requests requests (all when None); rate
        None keeps the recorded arrivals, a rate stretches time to that mean rate. arrival,
        scale and the clips do not apply.
      "conversations": num_requests multi-turn conversations arriving at `rate` (see
        `conversations.py`; `length_params` also takes turns, think_time, max_context_len).
      Any other name a module registered with `register_source`.
    Ids are "r<i>", or "<client>-<i>" for another client.
    """
    spec = os.fspath(name_or_path)
    if num_requests is not None and not _is_count(num_requests):
        raise WorkloadError(f"num_requests must be a non-negative integer, got {num_requests!r}")
    source = find_source(spec)
    if source is None:
        raise WorkloadError(
            f"name_or_path: unknown workload {spec!r}; expected one of {known_workloads()}"
        )
    w = WorkloadSpec(
        rate=rate,
        num_requests=num_requests,
        seed=seed,
        arrival=arrival,
        cv=cv,
        burst_size=burst_size,
        scale=scale,
        max_prompt_len=max_prompt_len,
        max_output_len=max_output_len,
        tokenize=tokenize,
        client=client,
        length_params=length_params,
    )
    return source.build(spec, w)


def workload_for(settings, rate: float, tokenize: Tokenize | None = None) -> list[TraceRequest]:
    """`make_workload` from an experiment's settings (any object with the fields `workload`,
    `num_requests`, `seed`, `arrival`, `cv`, `scale`, `max_prompt_len`, `max_output_len`,
    `output_sigma`): one trace per rate, the same for the engine, HTTP and the simulator."""
    s = settings
    return make_workload(
        s.workload,
        rate,
        s.num_requests,
        s.seed,
        arrival=s.arrival,
        cv=s.cv,
        scale=s.scale,
        max_prompt_len=s.max_prompt_len,
        max_output_len=s.max_output_len,
        tokenize=tokenize,
        length_params=None if s.output_sigma is None else {"sigma_output": s.output_sigma},
    )
