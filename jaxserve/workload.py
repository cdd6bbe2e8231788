"""Serving workloads for scheduling experiments: who asks for what, and when.

    arrival process (Poisson | Gamma | bursts)  ->  arrival times [n]
    lengths (fitted synthetic | ShareGPT / Alpaca file | trace)  ->  prompt, output lengths [n]
        -> list[TraceRequest] sorted by arrival  <->  trace JSONL (write_trace / read_trace)

`make_workload` is the one entry point experiments call. It draws arrivals and lengths from
two independent random streams spawned from one seed, so a rate sweep with a fixed seed
serves the same requests at every rate (common random numbers), only spaced differently.

Multi-turn conversations (`conversation_workload`): turn t's prompt is the whole conversation
so far (earlier user messages and replies) plus the new user message. The arrival gap between
consecutive turns is the user's think time; a closed-loop driver releases turn t at
`next_turn_release(...)` = (finish of turn t-1) + that gap, never before turn t-1 finished.

No jax here: workloads are built and tested without an accelerator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxserve.errors import InputError

Tokenize = Callable[[str], Sequence[Any]]


class WorkloadError(InputError):
    """A workload could not be built: bad argument, unreadable file, invalid trace line."""


@dataclasses.dataclass
class TraceRequest:
    id: str
    arrival: float  # seconds from the start of the run
    prompt_len: int  # prompt tokens (for a later turn: the whole conversation so far)
    output_len: int  # tokens to generate
    prompt: str | None = None  # prompt text, when the workload came from real data
    prompt_ids: list[int] | None = None  # prompt token ids, when known
    client: str = "default"  # tenant, for fairness experiments
    conversation: str | None = None  # conversation id for multi-turn workloads
    turn: int = 0  # 0 for the first turn of a conversation


def whitespace_tokenize(text: str) -> list[str]:
    """The default token counter: whitespace-separated words."""
    return text.split()


# ----------------------------------------------------------------------------- arrivals


def _check_rate(rate: float, n: int) -> None:
    if isinstance(rate, bool) or not (isinstance(rate, numbers.Real) and rate > 0):
        raise WorkloadError(f"rate must be a positive number of requests/s, got {rate!r}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise WorkloadError(f"n must be a non-negative integer, got {n!r}")


def poisson_arrivals(rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n arrival times [n] (seconds, nondecreasing) of a Poisson process with `rate` requests/s.

    Inter-arrival times are exponential with mean 1/rate; the first arrival comes one gap after
    0. `rate=math.inf` puts every request at 0 (an offline batch).
    """
    _check_rate(rate, n)
    if math.isinf(rate):
        return np.zeros(n)
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def gamma_arrivals(rate: float, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Bursty arrivals [n]: Gamma inter-arrival times with mean 1/rate and coefficient of
    variation `cv` (std / mean). cv = 1 is Poisson; cv > 1 is burstier, cv < 1 more regular.

    Gamma(shape k = 1/cv^2, scale = 1/(rate k)) has mean 1/rate and CV exactly cv.
    """
    _check_rate(rate, n)
    if not cv > 0:
        raise WorkloadError(f"cv must be positive, got {cv!r}")
    if math.isinf(rate):
        return np.zeros(n)
    shape = 1.0 / cv**2
    return np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), size=n))


def burst_arrivals(rate: float, burst_size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arrivals [n] in bursts: groups of `burst_size` requests at the same instant, the groups
    a Poisson process. `rate` is the mean *request* rate, so groups come at rate / burst_size.
    The last group is partial when burst_size does not divide n.
    """
    _check_rate(rate, n)
    if not isinstance(burst_size, (int, np.integer)) or burst_size < 1:
        raise WorkloadError(f"burst_size must be a positive integer, got {burst_size!r}")
    groups = poisson_arrivals(rate / burst_size, -(-n // burst_size), rng)
    return np.repeat(groups, burst_size)[:n]


ARRIVALS = ("poisson", "gamma", "burst")


def arrivals(
    kind: str,
    rate: float,
    n: int,
    rng: np.random.Generator,
    *,
    cv: float = 1.0,
    burst_size: int = 4,
) -> np.ndarray:
    """Dispatch on the arrival process name: "poisson", "gamma" (uses cv), "burst" (burst_size)."""
    if kind == "poisson":
        return poisson_arrivals(rate, n, rng)
    if kind == "gamma":
        return gamma_arrivals(rate, cv, n, rng)
    if kind == "burst":
        return burst_arrivals(rate, burst_size, n, rng)
    raise WorkloadError(f"arrival must be one of {ARRIVALS}, got {kind!r}")


# ----------------------------------------------------------------------------- lengths


def _finish_lengths(raw: np.ndarray, scale: float, max_len: int | None) -> np.ndarray:
    """Scale, round to whole tokens, clip to [1, max_len]."""
    lens = np.rint(raw * scale).astype(np.int64)
    return np.clip(lens, 1, max_len if max_len is not None else None)


@dataclasses.dataclass(frozen=True)
class LengthDistribution:
    """Prompt and output lengths drawn independently; `sample` scales, rounds and clips them.

    scale: multiplies both lengths before rounding (e.g. 0.1 for a tiny CPU model).
    max_prompt_len / max_output_len: upper clips (None: none); every length is at least 1.
    """

    scale: float = 1.0
    max_prompt_len: int | None = None
    max_output_len: int | None = None

    def _raw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """-> (prompt_lens [n], output_lens [n]), int64, each in [1, max]."""
        if not self.scale > 0:
            raise WorkloadError(f"scale must be positive, got {self.scale!r}")
        prompt, output = self._raw(n, rng)
        return (
            _finish_lengths(prompt, self.scale, self.max_prompt_len),
            _finish_lengths(output, self.scale, self.max_output_len),
        )


def _lognormal(mean: float, sigma: float, n: int, rng: np.random.Generator) -> np.ndarray:
    # A lognormal with parameters (mu, sigma) has mean exp(mu + sigma^2 / 2).
    return rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, size=n)


def _gamma(mean: float, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    shape = 1.0 / cv**2
    return rng.gamma(shape, mean / shape, size=n)


@dataclasses.dataclass(frozen=True)
class ShareGPTSynth(LengthDistribution):
    """Heavy-tailed lengths like ShareGPT (real ChatGPT conversations).

    Means from the vLLM paper (Kwon et al., SOSP 2023, Fig. 11): input 161.31 tokens, output
    337.99 tokens. Both are lognormal with those means. The paper gives means and histograms,
    no fitted shape, so the sigmas are a judgement call that gives long right tails: 1.2 for
    inputs (median ~78, p99 ~1.3k tokens) and 0.9 for outputs (median ~225, p99 ~1.8k).
    Prompt and output lengths are drawn independently (the real ones are weakly correlated).
    """

    mean_prompt: float = 161.31
    sigma_prompt: float = 1.2
    mean_output: float = 337.99
    sigma_output: float = 0.9

    def _raw(self, n, rng):
        return (
            _lognormal(self.mean_prompt, self.sigma_prompt, n, rng),
            _lognormal(self.mean_output, self.sigma_output, n, rng),
        )


@dataclasses.dataclass(frozen=True)
class AlpacaSynth(LengthDistribution):
    """Light-tailed lengths like Alpaca (short instructions and answers).

    Means from the vLLM paper: input 19.31 tokens, output 58.45 tokens. Gamma distributions
    (exponential tails, unlike ShareGPT's lognormal ones) with those means; the coefficients
    of variation (0.6 input, 0.8 output) are our choice, as no shape is published.
    """

    mean_prompt: float = 19.31
    cv_prompt: float = 0.6
    mean_output: float = 58.45
    cv_output: float = 0.8

    def _raw(self, n, rng):
        return (
            _gamma(self.mean_prompt, self.cv_prompt, n, rng),
            _gamma(self.mean_output, self.cv_output, n, rng),
        )


# Lower-case names, as make_workload spells them.
sharegpt_synth = ShareGPTSynth
alpaca_synth = AlpacaSynth
LENGTH_DISTRIBUTIONS: dict[str, type[LengthDistribution]] = {
    "sharegpt_synth": ShareGPTSynth,
    "alpaca_synth": AlpacaSynth,
}


# ----------------------------------------------------------------------------- dataset files

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


# ----------------------------------------------------------------------------- trace JSONL

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
    )


def read_trace(path: str | os.PathLike, tokenize: Tokenize | None = None) -> list[TraceRequest]:
    """Read a JSONL trace written by `write_trace` (or by hand), sorted by arrival (stable).

    Required per line: arrival, output_len, and one of prompt_len / prompt / prompt_ids (a
    missing prompt_len is len(prompt_ids), else the token count of prompt by `tokenize`,
    default whitespace words). Unknown fields, wrong types and duplicate ids are errors that
    name the file and the line. Blank lines are skipped; a missing id becomes "line<N>".
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise WorkloadError(f"{path}: file not found") from None
    requests, first_line = [], {}
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
        requests.append(r)
    requests.sort(key=lambda r: r.arrival)
    return requests


# ----------------------------------------------------------------------------- conversations


def conversation_workload(
    num_conversations: int,
    turns: int | tuple[int, int],
    rate: float,
    think_time: float,
    *,
    lengths: LengthDistribution | None = None,
    seed: int = 0,
    arrival: str = "poisson",
    cv: float = 1.0,
    max_context_len: int | None = None,
    client: str = "default",
) -> list[TraceRequest]:
    """Multi-turn conversations: first turns arrive by the arrival process at `rate`
    conversations/s; each later turn follows the previous one after an exponential think time
    with mean `think_time` seconds (0: no gap).

    Every turn draws a new user message length and reply length from `lengths` (default
    ShareGPTSynth()). Turn t's prompt_len = sum over earlier turns of (message + reply) + its
    own message, so a scheduler that keeps earlier turns' KV (FastSwitch) only needs the new
    part. `turns` is a count, or an inclusive (lo, hi) range drawn uniformly per conversation.
    A conversation ends early before a turn whose prompt_len + output_len would exceed
    max_context_len. Ids are "c<conv>-t<turn>"; sorted by (arrival, turn).
    """
    lo, hi = (turns, turns) if isinstance(turns, (int, np.integer)) else turns
    if not 1 <= lo <= hi:
        raise WorkloadError(f"turns must be >= 1 (or a range lo <= hi), got {turns!r}")
    if not think_time >= 0:
        raise WorkloadError(f"think_time must be >= 0 seconds, got {think_time!r}")
    lengths = lengths or ShareGPTSynth()
    arr_rng, len_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    starts = arrivals(arrival, rate, num_conversations, arr_rng, cv=cv)
    counts = len_rng.integers(lo, hi + 1, size=num_conversations)
    out = []
    for c, (start, count) in enumerate(zip(starts, counts)):
        messages, replies = lengths.sample(int(count), len_rng)
        gaps = len_rng.exponential(think_time, size=int(count)) if think_time > 0 else None
        t, history = float(start), 0
        for turn in range(int(count)):
            if turn > 0 and gaps is not None:
                t += float(gaps[turn])
            prompt_len = history + int(messages[turn])
            if max_context_len is not None and prompt_len + int(replies[turn]) > max_context_len:
                break
            out.append(
                TraceRequest(
                    id=f"c{c}-t{turn}",
                    arrival=t,
                    prompt_len=prompt_len,
                    output_len=int(replies[turn]),
                    client=client,
                    conversation=f"c{c}",
                    turn=turn,
                )
            )
            history = prompt_len + int(replies[turn])
    out.sort(key=lambda r: (r.arrival, r.turn))
    return out


def next_turn_release(
    previous: TraceRequest, previous_finish: float, request: TraceRequest
) -> float:
    """When a closed-loop driver releases `request`, the turn after `previous` (finished at
    previous_finish): the think time (their arrival gap) after the previous turn finished."""
    return previous_finish + (request.arrival - previous.arrival)


# ----------------------------------------------------------------------------- entry point


def assign_clients(
    requests: Sequence[TraceRequest], weights: Mapping[str, float], seed: int = 0
) -> list[TraceRequest]:
    """Give each request a client drawn with probability proportional to its weight (thinning a
    Poisson stream this way gives each client a Poisson stream of rate weight share * rate)."""
    names = list(weights)
    p = np.asarray([weights[k] for k in names], dtype=np.float64)
    if not names or np.any(p < 0) or p.sum() <= 0:
        raise WorkloadError(f"weights must be non-negative with a positive sum, got {weights!r}")
    picks = np.random.default_rng(seed).choice(len(names), size=len(requests), p=p / p.sum())
    return [dataclasses.replace(r, client=names[k]) for r, k in zip(requests, picks)]


def merge_workloads(*workloads: Sequence[TraceRequest]) -> list[TraceRequest]:
    """Several workloads (e.g. one per client) as one, sorted by arrival; ids must be unique."""
    merged = sorted((r for w in workloads for r in w), key=lambda r: r.arrival)
    ids = [r.id for r in merged]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise WorkloadError(f"merge_workloads: duplicate id {dup!r}; give each workload a client")
    return merged


def _rescale_rate(requests: list[TraceRequest], rate: float) -> list[TraceRequest]:
    """Stretch time so the trace's mean rate, (n - 1) / span, equals `rate`."""
    if len(requests) < 2:
        return requests
    t0, span = requests[0].arrival, requests[-1].arrival - requests[0].arrival
    if span <= 0:
        return requests
    factor = (len(requests) - 1) / span / rate
    return [dataclasses.replace(r, arrival=t0 + (r.arrival - t0) * factor) for r in requests]


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
    """A workload by name or file, sorted by arrival.

    name_or_path:
      "sharegpt_synth" / "alpaca_synth": synthetic lengths (see the classes) with scale and
        clips; needs rate and num_requests.
      "*.json": a ShareGPT or Alpaca file (told apart by layout); num_requests entries drawn at
        random (all usable entries when None); lengths from the text by `tokenize`; prompts over
        max_prompt_len skipped, outputs clipped to max_output_len; `scale` does not apply.
      "*.jsonl": a trace (`read_trace`); the first num_requests requests (all when None); rate
        None keeps the recorded arrivals, a rate stretches time to that mean rate. arrival,
        scale and the clips do not apply.
    rate: requests/s (math.inf: everything at 0). arrival: "poisson" | "gamma" (cv) | "burst"
      (burst_size). Arrivals and lengths use independent streams spawned from `seed`.
    client: the client of every request; ids are "r<i>", or "<client>-<i>" for another client.
    length_params: other fields of a synthetic length distribution, e.g. {"sigma_output": 2.0}.
    """
    spec = os.fspath(name_or_path)
    if num_requests is not None and not (_is_int(num_requests) and num_requests >= 0):
        raise WorkloadError(f"num_requests must be a non-negative integer, got {num_requests!r}")
    arr_rng, len_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))

    if spec.endswith(".jsonl"):
        requests = read_trace(spec, tokenize=tokenize)
        if num_requests is not None:
            requests = requests[:num_requests]
        return requests if rate is None else _rescale_rate(requests, rate)

    if spec in LENGTH_DISTRIBUTIONS or spec.endswith(".json"):
        if rate is None:
            raise WorkloadError(f"rate is required for workload {spec!r}")
        if arrival not in ARRIVALS:
            raise WorkloadError(f"arrival must be one of {ARRIVALS}, got {arrival!r}")
    else:
        raise WorkloadError(
            f"name_or_path: unknown workload {spec!r}; expected one of "
            f"{sorted(LENGTH_DISTRIBUTIONS)}, a trace '*.jsonl' or a ShareGPT/Alpaca '*.json'"
        )

    if spec.endswith(".json"):
        entries = read_dataset(
            spec,
            tokenize=tokenize,
            max_prompt_len=max_prompt_len,
            max_output_len=max_output_len,
        )
        n = len(entries) if num_requests is None else num_requests
        times = arrivals(arrival, rate, n, arr_rng, cv=cv, burst_size=burst_size)
        requests = _with_arrivals(entries, times, len_rng)
        return [dataclasses.replace(r, client=client) for r in requests]

    if num_requests is None:
        raise WorkloadError(f"num_requests is required for workload {spec!r}")
    try:
        dist = LENGTH_DISTRIBUTIONS[spec](
            scale=scale, max_prompt_len=max_prompt_len, max_output_len=max_output_len,
            **(length_params or {}),
        )  # fmt: skip
    except TypeError as e:
        raise WorkloadError(f"length_params {length_params!r} for {spec!r}: {e}") from None
    times = arrivals(arrival, rate, num_requests, arr_rng, cv=cv, burst_size=burst_size)
    prompt_lens, output_lens = dist.sample(num_requests, len_rng)
    prefix = "r" if client == "default" else f"{client}-"
    return [
        TraceRequest(
            id=f"{prefix}{i}",
            arrival=float(t),
            prompt_len=int(p),
            output_len=int(o),
            client=client,
        )
        for i, (t, p, o) in enumerate(zip(times, prompt_lens, output_lens))
    ]
