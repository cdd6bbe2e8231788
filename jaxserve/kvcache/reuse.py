"""Multi-turn KV reuse: a finished turn's KV kept on the host for its conversation's next turn.

    keep(conversation, request, host, cached)   a turn ended: its first `cached` tokens' KV,
                                                already on its way to the host
    take(conversation, prompt) -> Kept | None   the next turn: the kept KV when the prompt
                                                starts with its tokens (and adds at least one)
    evict(budget_pages)                         least recently used out, down to the budget

An entry owns its host copy: a replaced or evicted entry releases it, and `take` hands it
over to the caller (who releases it).

One entry per conversation (the latest turn's). The engine fills an entry's tokens when the
turn's last token has been read (`complete`), since the copy is dispatched while they are
still in flight; an entry whose tokens are not all known yet matches nothing.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence

from jaxserve.kvcache.host import HostKV


@dataclasses.dataclass
class Kept:
    request_id: str  # the turn whose KV this is
    host: HostKV  # its first `cached` tokens' pages
    cached: int  # tokens whose KV the copy holds
    tokens: list[int] | None = None  # those tokens, once all are known

    @property
    def num_pages(self) -> int:
        return self.host.num_pages


class ConversationKV:
    def __init__(self):
        self._entries: OrderedDict[str, Kept] = OrderedDict()  # least recently used first
        self.hits = 0
        self.misses = 0
        self.tokens_reused = 0  # prompt tokens whose prefill a hit saved
        self.evicted = 0

    def keep(self, conversation: str, request_id: str, host: HostKV, cached: int) -> None:
        old = self._entries.pop(conversation, None)  # a later turn replaces an earlier one
        if old is not None:
            old.host.release()
        self._entries[conversation] = Kept(request_id, host, cached)

    def complete(self, conversation: str, request_id: str, tokens: Sequence[int]) -> None:
        """The turn `request_id` ended with these tokens (prompt + output)."""
        entry = self._entries.get(conversation)
        if entry is not None and entry.request_id == request_id:
            entry.tokens = list(tokens[: entry.cached])

    def take(self, conversation: str, prompt: Sequence[int]) -> Kept | None:
        entry = self._entries.get(conversation)
        if (
            entry is None
            or entry.tokens is None
            or len(prompt) <= entry.cached
            or list(prompt[: entry.cached]) != entry.tokens
        ):
            self.misses += 1
            return None
        del self._entries[conversation]
        self.hits += 1
        self.tokens_reused += entry.cached
        return entry

    @property
    def num_pages(self) -> int:
        return sum(e.num_pages for e in self._entries.values())

    def evict(self, budget_pages: int) -> None:
        while self._entries and self.num_pages > budget_pages:
            _, entry = self._entries.popitem(last=False)
            entry.host.release()
            self.evicted += 1

    def __len__(self) -> int:
        return len(self._entries)
