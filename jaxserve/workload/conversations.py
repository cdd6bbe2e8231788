"""Multi-turn conversations.

Turn t's prompt is the whole conversation so far (earlier user messages and replies) plus the
new user message. The arrival gap between consecutive turns is the user's think time; a
closed-loop driver releases turn t at `next_turn_release(...)` = (finish of turn t-1) + that
gap, never before turn t-1 finished.
"""

from __future__ import annotations

import numpy as np

from jaxserve.workload.arrivals import arrivals
from jaxserve.workload.lengths import LengthDistribution, ShareGPTSynth
from jaxserve.workload.registry import WorkloadSpec, register_source
from jaxserve.workload.request import TraceRequest, WorkloadError


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


@register_source
class ConversationSource:
    """ "conversations": num_requests conversations whose first turns arrive at `rate`; turn
    lengths from ShareGPTSynth with the spec's scale and clips. `length_params` takes
    turns (default (1, 4)), think_time (default 1.0 s) and max_context_len (default none)."""

    name = "conversations"

    def matches(self, spec: str) -> bool:
        return spec == self.name

    def build(self, spec: str, w: WorkloadSpec) -> list[TraceRequest]:
        rate = w.require_rate(spec)
        n = w.require_count(spec)
        params = {"turns": (1, 4), "think_time": 1.0, "max_context_len": None}
        unknown = sorted(set(w.length_params or {}) - set(params))
        if unknown:
            raise WorkloadError(f"length_params {unknown} for {spec!r}: allowed {sorted(params)}")
        params.update(w.length_params or {})
        lengths = ShareGPTSynth(
            scale=w.scale, max_prompt_len=w.max_prompt_len, max_output_len=w.max_output_len
        )
        turns = params["turns"]
        return conversation_workload(
            n,
            tuple(turns) if isinstance(turns, list) else turns,
            rate,
            params["think_time"],
            lengths=lengths,
            seed=w.seed,
            arrival=w.arrival,
            cv=w.cv,
            max_context_len=params["max_context_len"],
            client=w.client,
        )
