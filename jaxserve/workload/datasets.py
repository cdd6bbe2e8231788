"""Dataset files: ShareGPT and Alpaca JSON, one request per usable entry.

file.json -> detect_layout -> (prompt text, reply text) pairs -> token counts
    -> TraceRequests at arrival 0 in file order, or one per given arrival time
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxserve.workload.arrivals import arrivals
from jaxserve.workload.registry import WorkloadSpec, register_source
from jaxserve.workload.request import Tokenize, TraceRequest, WorkloadError, whitespace_tokenize

_HUMAN = ("human", "user")
_MODEL = ("gpt", "chatgpt", "assistant", "bard", "bing")


def _load_json_list(path: str | os.PathLike) -> list:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkloadError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise WorkloadError(f"{path}: not JSON (not UTF-8 text: {e.reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise WorkloadError(
            f"{path}: wrong layout: expected a JSON list of entries, got {type(data).__name__}"
        )
    return data


def detect_layout(data: list) -> str | None:
    """ "sharegpt" if an entry has "conversations", "alpaca" if one has "instruction" and
    "output", else None."""
    for entry in data:
        if isinstance(entry, dict):
            if "conversations" in entry:
                return "sharegpt"
            if "instruction" in entry and "output" in entry:
                return "alpaca"
    return None


def _sharegpt_pair(entry: Any) -> tuple[str, str] | None:
    """The first human message immediately answered by the model, or None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
        return None
    turns = entry["conversations"]
    for a, b in zip(turns, turns[1:]):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            continue
        if a.get("from") in _HUMAN and b.get("from") in _MODEL:
            if isinstance(a.get("value"), str) and isinstance(b.get("value"), str):
                return a["value"], b["value"]
    return None


def _alpaca_pair(entry: Any) -> tuple[str, str] | None:
    """Prompt = instruction, then the input (if any) after a blank line; reply = output."""
    if not isinstance(entry, dict):
        return None
    instruction, inp, output = entry.get("instruction"), entry.get("input", ""), entry.get("output")
    if not (isinstance(instruction, str) and isinstance(output, str)):
        return None
    if not isinstance(inp, str):
        return None
    return (f"{instruction}\n\n{inp}" if inp.strip() else instruction), output


def _requests_from_pairs(
    path: Path,
    layout: str,
    data: list,
    tokenize: Tokenize | None,
    max_prompt_len: int | None,
    max_output_len: int | None,
) -> list[TraceRequest]:
    """Usable entries -> TraceRequests at arrival 0, in file order."""
    tokenize = tokenize or whitespace_tokenize
    pair_of = _sharegpt_pair if layout == "sharegpt" else _alpaca_pair
    out, malformed, empty, too_long = [], 0, 0, 0
    for i, entry in enumerate(data):
        pair = pair_of(entry)
        if pair is None:
            malformed += 1
            continue
        prompt, reply = pair
        prompt_len, output_len = len(tokenize(prompt)), len(tokenize(reply))
        if prompt_len == 0 or output_len == 0:
            empty += 1
            continue
        if max_prompt_len is not None and prompt_len > max_prompt_len:
            too_long += 1
            continue
        if max_output_len is not None:
            output_len = min(output_len, max_output_len)
        entry_id = entry.get("id") if layout == "sharegpt" else None
        out.append(
            TraceRequest(
                id=str(entry_id) if entry_id is not None else str(i),
                arrival=0.0,
                prompt_len=prompt_len,
                output_len=output_len,
                prompt=prompt,
            )
        )
    if not out:
        raise WorkloadError(
            f"{path}: no usable entries in {len(data)} ({layout} layout): {malformed} without a "
            f"prompt/reply pair, {empty} with an empty prompt or reply, {too_long} with a prompt "
            f"over max_prompt_len={max_prompt_len}"
        )
    return out


def _with_arrivals(
    entries: list[TraceRequest], times: Sequence[float] | None, rng: np.random.Generator | None
) -> list[TraceRequest]:
    """Give len(times) requests the arrival times, in order. Entries are drawn by rng (without
    replacement when there are enough, else with) or, without rng, taken in order, cycling.
    Ids stay unique: a repeated entry gets '/k' appended."""
    if times is None:
        return entries
    times = np.sort(np.asarray(times, dtype=np.float64))
    n, m = len(times), len(entries)
    if rng is None:
        picks = np.arange(n) % m
    else:
        picks = rng.choice(m, size=n, replace=n > m)
    seen: dict[int, int] = {}
    out = []
    for t, p in zip(times, picks):
        k = seen.get(int(p), 0)
        seen[int(p)] = k + 1
        e = entries[p]
        out.append(dataclasses.replace(e, id=e.id if k == 0 else f"{e.id}/{k}", arrival=float(t)))
    return out


def read_sharegpt(
    path: str | os.PathLike,
    arrival_times: Sequence[float] | None = None,
    *,
    rng: np.random.Generator | None = None,
    tokenize: Tokenize | None = None,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
) -> list[TraceRequest]:
    """ShareGPT JSON: a list of {"id", "conversations": [{"from": "human"|"gpt", "value"}...]}.

    Each entry gives one request: its first human message answered by the model is the prompt
    (text kept), the reply's token count the output length. Token counts use `tokenize`
    (default: whitespace words). Entries without such a pair, with an empty side, or with a
    prompt over max_prompt_len are skipped; output lengths are clipped to max_output_len.

    arrival_times None: every usable entry, all at arrival 0, in file order. Otherwise one
    request per time (see `_with_arrivals` for how entries are picked).
    """
    data = _load_json_list(path)
    if detect_layout(data) != "sharegpt":
        raise WorkloadError(
            f"{path}: wrong layout: expected ShareGPT entries with a 'conversations' list"
        )
    entries = _requests_from_pairs(
        Path(path), "sharegpt", data, tokenize, max_prompt_len, max_output_len
    )
    return _with_arrivals(entries, arrival_times, rng)


def read_alpaca(
    path: str | os.PathLike,
    arrival_times: Sequence[float] | None = None,
    *,
    rng: np.random.Generator | None = None,
    tokenize: Tokenize | None = None,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
) -> list[TraceRequest]:
    """Alpaca JSON: a list of {"instruction", "input", "output"}. The prompt is the instruction,
    followed by the input after a blank line when there is one; the output's token count is the
    output length. Otherwise as `read_sharegpt` (entry ids are the list indices)."""
    data = _load_json_list(path)
    if detect_layout(data) != "alpaca":
        raise WorkloadError(
            f"{path}: wrong layout: expected Alpaca entries with 'instruction' and 'output'"
        )
    entries = _requests_from_pairs(
        Path(path), "alpaca", data, tokenize, max_prompt_len, max_output_len
    )
    return _with_arrivals(entries, arrival_times, rng)


def read_dataset(path: str | os.PathLike, arrival_times=None, **kwargs) -> list[TraceRequest]:
    """ShareGPT or Alpaca JSON, told apart by layout (`detect_layout`)."""
    layout = detect_layout(_load_json_list(path))
    if layout is None:
        raise WorkloadError(
            f"{path}: wrong layout: neither ShareGPT (entries with 'conversations') nor Alpaca "
            "(entries with 'instruction' and 'output')"
        )
    reader = read_sharegpt if layout == "sharegpt" else read_alpaca
    return reader(path, arrival_times, **kwargs)


@register_source
class DatasetSource:
    """A ShareGPT or Alpaca file: num_requests entries drawn at random (all usable entries when
    None) at the arrival process's times; lengths from the text; `scale` does not apply."""

    name = "*.json"

    def matches(self, spec: str) -> bool:
        return spec.endswith(".json")

    def build(self, spec: str, w: WorkloadSpec) -> list[TraceRequest]:
        rate = w.require_rate(spec)
        entries = read_dataset(
            spec,
            tokenize=w.tokenize,
            max_prompt_len=w.max_prompt_len,
            max_output_len=w.max_output_len,
        )
        n = len(entries) if w.num_requests is None else w.num_requests
        arr_rng, len_rng = w.streams()
        times = arrivals(w.arrival, rate, n, arr_rng, cv=w.cv, burst_size=w.burst_size)
        requests = _with_arrivals(entries, times, len_rng)
        return [dataclasses.replace(r, client=w.client) for r in requests]
