"""Trace JSONL files: one `TraceRequest` a line, written and read back with validation.

list[TraceRequest]  --write_trace-->  trace.jsonl (one JSON object a line)
trace.jsonl  --read_trace-->  list[TraceRequest], sorted by arrival, every line checked
"*.jsonl" as a workload: the recorded arrivals, or time stretched to a given mean rate
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxserve.workload.registry import WorkloadSpec, register_source
from jaxserve.workload.request import Tokenize, TraceRequest, WorkloadError, whitespace_tokenize

_FIELDS = {f.name: f for f in dataclasses.fields(TraceRequest)}


def write_trace(path: str | os.PathLike, requests: Sequence[TraceRequest]) -> None:
    """One JSON object per line, fields of TraceRequest; None-valued fields are left out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in requests:
            row = {k: v for k, v in dataclasses.asdict(r).items() if v is not None}
            f.write(json.dumps(row) + "\n")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _request_from_row(row: Any, where: str, tokenize: Tokenize | None) -> TraceRequest:
    def bad(msg: str) -> WorkloadError:
        return WorkloadError(f"{where}: {msg}")

    if not isinstance(row, dict):
        raise bad(f"expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(_FIELDS))
    if unknown:
        raise bad(f"unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}")
    for key in ("arrival", "output_len"):
        if key not in row:
            raise bad(f"missing required field {key!r}")
    if not any(row.get(k) is not None for k in ("prompt_len", "prompt", "prompt_ids")):
        raise bad("needs one of 'prompt_len', 'prompt', 'prompt_ids'")
    arrival = row["arrival"]
    if _is_int(arrival) or isinstance(arrival, float):
        arrival = float(arrival)
    else:
        raise bad(f"arrival must be a number, got {arrival!r}")
    if not (math.isfinite(arrival) and arrival >= 0):
        raise bad(f"arrival must be finite and >= 0, got {arrival!r}")
    if not (_is_int(row["output_len"]) and row["output_len"] >= 1):
        raise bad(f"output_len must be an integer >= 1, got {row['output_len']!r}")
    prompt, ids = row.get("prompt"), row.get("prompt_ids")
    if prompt is not None and not isinstance(prompt, str):
        raise bad(f"prompt must be a string, got {type(prompt).__name__}")
    if ids is not None and not (
        isinstance(ids, list) and ids and all(_is_int(t) and t >= 0 for t in ids)
    ):
        raise bad("prompt_ids must be a non-empty list of non-negative integers")
    prompt_len = row.get("prompt_len")
    if prompt_len is None:
        prompt_len = len(ids) if ids is not None else len((tokenize or whitespace_tokenize)(prompt))
    if not (_is_int(prompt_len) and prompt_len >= 1):
        raise bad(f"prompt_len must be an integer >= 1, got {prompt_len!r}")
    if ids is not None and prompt_len != len(ids):
        raise bad(f"prompt_len {prompt_len} != len(prompt_ids) {len(ids)}")
    for key in ("id", "client", "conversation"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise bad(f"{key} must be a string, got {row[key]!r}")
    turn = row.get("turn", 0)
    if not (_is_int(turn) and turn >= 0):
        raise bad(f"turn must be an integer >= 0, got {turn!r}")
    priority = row.get("priority", 0)
    if not _is_int(priority):
        raise bad(f"priority must be an integer, got {priority!r}")
    weight = row.get("weight")
    if weight is not None:
        if not ((_is_int(weight) or isinstance(weight, float)) and 0 < weight < math.inf):
            raise bad(f"weight must be a number > 0, got {weight!r}")
        weight = float(weight)
    return TraceRequest(
        id=row.get("id", ""),
        arrival=arrival,
        prompt_len=prompt_len,
        output_len=row["output_len"],
        prompt=prompt,
        prompt_ids=ids,
        client=row.get("client", "default"),
        conversation=row.get("conversation"),
        turn=turn,
        weight=weight,
        priority=priority,
    )


def read_trace(path: str | os.PathLike, tokenize: Tokenize | None = None) -> list[TraceRequest]:
    """Read a JSONL trace written by `write_trace` (or by hand), sorted by arrival (stable).

    Required per line: arrival, output_len, and one of prompt_len / prompt / prompt_ids (a
    missing prompt_len is len(prompt_ids), else the token count of prompt by `tokenize`,
    default whitespace words). Optional: id, prompt, prompt_ids, client, conversation, turn,
    weight (the client's; one per client), priority (an integer, lower first; default 0).
    Unknown fields, wrong types, duplicate ids and a client with two weights are errors that
    name the file and the line. Blank lines are skipped; a missing id becomes "line<N>".
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise WorkloadError(f"{path}: file not found") from None
    requests, first_line, weights = [], {}, {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{where}: not JSON ({e.msg})") from None
        r = _request_from_row(row, where, tokenize)
        if "id" not in row:
            r.id = f"line{lineno}"
        if r.id in first_line:
            raise WorkloadError(
                f"{where}: duplicate id {r.id!r} (first on line {first_line[r.id]})"
            )
        first_line[r.id] = lineno
        if r.weight is not None:
            w, line0 = weights.setdefault(r.client, (r.weight, lineno))
            if w != r.weight:
                raise WorkloadError(
                    f"{where}: client {r.client!r} has weight {r.weight}, but {w} on line "
                    f"{line0}; give a client one weight"
                )
        requests.append(r)
    requests.sort(key=lambda r: r.arrival)
    return requests


def _rescale_rate(requests: list[TraceRequest], rate: float) -> list[TraceRequest]:
    """Stretch time so the trace's mean rate, (n - 1) / span, equals `rate`."""
    if len(requests) < 2:
        return requests
    t0, span = requests[0].arrival, requests[-1].arrival - requests[0].arrival
    if span <= 0:
        return requests
    factor = (len(requests) - 1) / span / rate
    return [dataclasses.replace(r, arrival=t0 + (r.arrival - t0) * factor) for r in requests]


@register_source
class TraceSource:
    """A recorded trace: the first num_requests requests (all when None); rate None keeps the
    recorded arrivals, a rate stretches time to that mean rate. arrival, scale and the clips do
    not apply."""

    name = "*.jsonl"

    def matches(self, spec: str) -> bool:
        return spec.endswith(".jsonl")

    def build(self, spec: str, w: WorkloadSpec) -> list[TraceRequest]:
        requests = read_trace(spec, tokenize=w.tokenize)
        if w.num_requests is not None:
            requests = requests[: w.num_requests]
        return requests if w.rate is None else _rescale_rate(requests, w.rate)
