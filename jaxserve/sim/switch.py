"""Context switches in the simulator: FastSwitch's mechanisms, priced transfer by transfer.

    Switch(transfer, sync, reuse, copies, copy_latency)    what `--switch` turns on
    SwitchState(switch, cost, page_size, ...)              one run's host copies and prices

Without a `Switch` the simulator prices a plan's swaps as the cost model does: one copy per
swap direction, in series with the compute. With one, as the engine's `--switch` modes run
(`jaxserve.sched.settings.SWITCHES`):

* transfer: how a request's pages are cut into copies, as the engine's host tier cuts them:
  "gather" one copy per swap, "groups" one per contiguous run of device pages (FastSwitch's
  block groups), "pages" one per page (vLLM). A copy of n pages costs the cost model's
  `swap_time(n)` plus `copies` x `copy_latency`: the cost model's own per-copy time covers
  the engine's one gathered block; a cache laid out per layer, as vLLM's and FastSwitch's
  are, makes every transfer 2 x layers copies (K and V of each layer), each with its launch
  and link latency.
* sync: the device call waits for its swaps (compute + swap-outs + swap-ins, vLLM); async,
  swap-outs overlap the compute (max of the two) and swap-ins still precede it.
* reuse: (1) a swap-out copies only the pages not already valid on the host (a request
  swapped out before, then in, keeps its host copy); (2) a finished turn of a conversation
  keeps its KV on the host (least recently used out beyond `host_pages`), copied out after
  the turn like a swap-out, and the conversation's next turn swaps it in and prefills only
  its new tokens. The prefill of those is priced as a prompt of their length (the cost
  model's prefill has no earlier context; attention over the kept prefix is left out).

Every figure is also counted: seconds of swaps, bytes copied, bytes reuse saved, prompt
tokens whose prefill reuse saved; per request its bytes and seconds of copies, and its stall:
the seconds of copies its device calls waited for (all of them when sync; with async, the
swap-ins and what of the swap-outs the compute did not hide).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping

from jaxserve.sched.allocator import contiguous_runs
from jaxserve.sched.plan import Plan
from jaxserve.sched.request import Request

__all__ = ["TRANSFERS", "Switch", "SwitchState", "switch_for"]

TRANSFERS = ("gather", "groups", "pages")


@dataclasses.dataclass(frozen=True)
class Switch:
    transfer: str = "gather"
    sync: bool = False
    reuse: bool = True
    copies: int = 1  # copies one transfer takes (a per-layer cache: 2 x layers)
    copy_latency: float = 0.0  # seconds per copy on top of the cost model's swap time

    def __post_init__(self) -> None:
        if self.transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {TRANSFERS}, not {self.transfer!r}")
        if self.copies < 1 or self.copy_latency < 0:
            raise ValueError("copies must be >= 1 and copy_latency >= 0")


def switch_for(name: str, copies: int = 1, copy_latency: float = 0.0) -> Switch:
    """The `Switch` of an engine `--switch` mode (`SWITCHES`). The engine's own gathered
    block is one copy; the per-layer modes ("groups", "pages") take `copies` each."""
    from jaxserve.sched.settings import SWITCHES

    try:
        mode = SWITCHES[name]
    except KeyError:
        raise ValueError(f"unknown switch {name!r}; one of {list(SWITCHES)}") from None
    transfer = mode["swap_transfer"]
    return Switch(
        transfer=transfer,
        sync=mode["sync_swaps"],
        reuse=mode["reuse"],
        copies=1 if transfer == "gather" else copies,
        copy_latency=copy_latency,
    )


@dataclasses.dataclass
class _Kept:
    tokens: int  # tokens whose KV the host copy holds
    pages: int


class SwitchState:
    """One simulated run's host copies (module docstring). `conversation`: request id ->
    its conversation (the requests that keep their KV for a next turn)."""

    def __init__(
        self,
        switch: Switch,
        cost,
        page_size: int,
        kv_bytes_per_page: int,
        host_pages: int | None = None,
        conversation: Mapping[str, str] | None = None,
    ):
        if not hasattr(cost, "swap_time"):
            raise ValueError("a switch model needs a cost model with swap_time(pages)")
        self.switch = switch
        self.cost = cost
        self.page_size = page_size
        self.page_bytes = kv_bytes_per_page
        self.host_pages = host_pages
        self.conversation = dict(conversation or {})
        self.host_valid: dict[str, int] = {}  # request id -> leading pages valid on the host
        self.kept: OrderedDict[str, _Kept] = OrderedDict()  # conversation -> KV, LRU first
        self.reused: set[str] = set()  # requests whose first prefill has looked for kept KV
        self.pending_out = 0.0  # copies of finished turns, not yet on a device call
        self.swap_seconds = 0.0
        self.bytes_copied = 0
        self.bytes_saved = 0
        self.tokens_reused = 0
        self.per_request: dict[str, tuple[int, float]] = {}  # id -> (bytes, seconds) copied
        self.stall = 0.0  # seconds the last priced call waited on copies (not hidden)

    def transfer_time(self, pages: list[int], rid: str | None = None) -> float:
        """Seconds to copy these device pages one way, cut as `switch.transfer` cuts them
        (counted to request `rid`'s bytes and swap time)."""
        if not pages:
            return 0.0
        sw = self.switch
        if sw.transfer == "gather":
            sizes = [len(pages)]
        elif sw.transfer == "pages":
            sizes = [1] * len(pages)
        else:
            sizes = [n for _, n in contiguous_runs(pages)]
        nbytes = len(pages) * self.page_bytes
        swap = self.cost.swap_time
        seconds = sum(swap(n) for n in sizes) + len(sizes) * sw.copies * sw.copy_latency
        self.bytes_copied += nbytes
        if rid is not None:
            b, t = self.per_request.get(rid, (0, 0.0))
            self.per_request[rid] = (b + nbytes, t + seconds)
        return seconds

    def _valid_pages(self, r: Request, pages: int) -> int:
        """Pages of r whose KV is complete: every token but the last sampled one has KV."""
        return min(pages, max(0, r.context_len - 1) // self.page_size)

    def _swap_out(self, r: Request, pages: list[int]) -> float:
        valid = self.host_valid.get(r.id, 0) if self.switch.reuse else 0
        self.bytes_saved += min(valid, len(pages)) * self.page_bytes
        seconds = self.transfer_time(pages[valid:], r.id)
        if self.switch.reuse:
            self.host_valid[r.id] = self._valid_pages(r, len(pages))
        return seconds

    def price(self, plan: Plan, steps: int, compute) -> float:
        """Device seconds of a plan: `compute(plan, steps)` prices its batch (given a plan
        without swaps, and prefills shortened by reuse), this class its copies."""
        sw = self.switch
        outs, self.pending_out = self.pending_out, 0.0
        outs += sum(self._swap_out(r, pages) for r, pages in plan.swap_out)
        ins = sum(self.transfer_time(pages, r.id) for r, pages in plan.swap_in)
        for r in plan.drop:
            self.host_valid.pop(r.id, None)
        prefill = []
        for r in plan.prefill:
            k = self._take(r)
            if k:
                kept_pages = -(-k // self.page_size)
                ins += self.transfer_time(r.pages[:kept_pages], r.id)
                prefill.append(Request(r.id, r.arrival, r.context_len - k, 1))
            else:
                prefill.append(r)
        t = compute(Plan(prefill=prefill, decode=plan.decode), steps) if plan.batch else 0.0
        self.swap_seconds += outs + ins
        self.stall = outs + ins if sw.sync else max(0.0, outs - t) + ins
        return t + self.stall

    def _take(self, r: Request) -> int:
        """Prompt tokens of r's first prefill whose KV its conversation kept (0: none)."""
        if not self.switch.reuse or r.num_generated or r.id in self.reused:
            return 0
        conv = self.conversation.get(r.id)
        entry = self.kept.pop(conv, None) if conv is not None else None
        k = entry.tokens if entry is not None and entry.tokens < r.prompt_len else 0
        self.reused.add(r.id)
        self.tokens_reused += k
        return k

    def finished(self, r: Request, pages: list[int], tokens: int) -> None:
        """r ended holding these device pages, with KV for its first `tokens` tokens: keep
        it for its conversation's next turn (reuse), copying out what the host lacks with
        the next device call."""
        valid = self.host_valid.pop(r.id, 0)
        conv = self.conversation.get(r.id)
        n = min(len(pages), -(-tokens // self.page_size))
        if not self.switch.reuse or conv is None or not n:
            return
        valid = min(valid, n)
        self.bytes_saved += valid * self.page_bytes
        self.pending_out += self.transfer_time(pages[valid:n], r.id)
        self.kept.pop(conv, None)
        self.kept[conv] = _Kept(tokens=min(tokens, n * self.page_size), pages=n)
        if self.host_pages is not None:
            while self.kept and sum(e.pages for e in self.kept.values()) > self.host_pages:
                self.kept.popitem(last=False)

    def stats(self) -> dict:
        return {
            "swap_seconds": self.swap_seconds,
            "bytes_copied": self.bytes_copied,
            "bytes_saved_by_reuse": self.bytes_saved,
            "prompt_tokens_reused": self.tokens_reused,
        }
