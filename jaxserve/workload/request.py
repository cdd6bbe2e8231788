"""What every workload produces: `TraceRequest`s, and the error every workload raises."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

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
    weight: float | None = None  # the client's fairness weight (None: 1); one per client
    priority: int = 0  # lower runs first under the `priority` scheduler (others ignore it)


def whitespace_tokenize(text: str) -> list[str]:
    """The default token counter: whitespace-separated words."""
    return text.split()


def replay_cap(prompt_len: int, output_len: int, max_output_len: int, max_seq_len: int) -> int:
    """max_new_tokens of a replayed request: it asks for up to `max_output_len` tokens (its
    trace length if longer), as a client sets max_tokens, and ends at its trace length as if
    the model emitted EOS. Policies plan with this cap; only the srpt oracle reads the length."""
    return max(1, min(max_seq_len - prompt_len, max(max_output_len, output_len)))
