"""Host tier: a preempted request's KV pages moved to host memory and back.

    swap_out: pages [n] --jitted gather (all layers, one call)--> per layer [K, n, S, hd] on host
    swap_in:  host copy --transfer--> jitted scatter into newly allocated pages (donated)

Two host backends, both bit-exact, and both asynchronous: `swap_out` and `swap_in` only
dispatch device work and never wait for it. Their order against the model steps is the order
of data dependencies on the page arrays (every step, gather and scatter takes the pages the
previous one returned), so a page freed by a swap-out can be handed to the next step at once:
the step runs after the gather has read it.
  * "pinned_host": JAX memory kinds; the pages are gathered on the device (a fast copy in
    device memory) and the gathered block goes to pinned host memory by `jax.device_put`,
    a transfer the runtime runs beside the compute stream; a swap-in transfers back the same
    way before a jitted scatter.
  * "numpy": the gathered arrays are copied to host memory with `copy_to_host_async` and
    turned into numpy arrays by `HostKV.settle()` once the engine knows the copy is done (it
    calls it after it next reads tokens back). On the CPU backend "device" and "host" are the
    same RAM and `device_put` across memory kinds copies at ~1.6 GB/s, against ~10x that for
    numpy, so "auto" picks numpy there and pinned_host on accelerators.
Page counts are bucketed to powers of two (padding reads and writes hit the null page), so a
run compiles a handful of swap programs at most.

Copies share what is already on the host. A copy is made of blocks (one per transfer), each
referenced by every copy holding some of its pages: `HostKV.prefix` keeps a swapped-in
request's unchanged pages on the host (the engine then copies out only the pages written
since), `HostKV.join` appends a new copy to it, and `release` frees a block with its last
reference. The tier counts the bytes of live blocks (`live_bytes`) against an optional budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxserve.kvcache.pages import NULL_PAGE, KVPages
from jaxserve.sched.allocator import contiguous_runs
from jaxserve.utils import pow2


class HostMemoryError(MemoryError):
    """The host tier cannot hold another copy (its budget, `HostTier.budget_bytes`)."""


class HostBlock:
    """One transfer's copy on the host: a `KVPages` with pages on axis 1, padded to a power
    of two, `size` of them real. Shared by every `HostKV` that holds some of its pages and
    freed (its bytes returned to the tier) when the last one releases it."""

    def __init__(self, tier: HostTier, part: KVPages, size: int, page_bytes: int):
        self.tier, self.part, self.size, self.page_bytes = tier, part, size, page_bytes
        self.refs = 1

    @property
    def nbytes(self) -> int:
        return self.size * self.page_bytes

    def settle(self) -> None:
        part = self.part
        first = None if part is None else part.k[0]
        if isinstance(first, jax.Array) and first.sharding.memory_kind != "pinned_host":
            self.part = KVPages(*jax.device_get((part.k, part.v)))

    def unref(self) -> None:
        if self.refs <= 0:
            raise AssertionError("host block freed twice")
        self.refs -= 1
        if not self.refs:
            self.part = None
            self.tier.live_bytes -= self.nbytes
            self.tier.freed_blocks += 1


@dataclasses.dataclass
class HostKV:
    """A request's pages on the host, in order: slices (block, first page in it, pages) of
    one or more `HostBlock`s. Several copies may share a block (`prefix`): a page already on
    the host is never copied again. `release` gives the copy's blocks back, once."""

    slices: list[tuple[HostBlock, int, int]]
    released: bool = False

    @property
    def num_pages(self) -> int:
        return sum(n for _, _, n in self.slices)

    @property
    def nbytes(self) -> int:
        """Bytes of its pages (the real ones, not the padding)."""
        return sum(n * b.page_bytes for b, _, n in self.slices)

    @property
    def parts(self) -> list[KVPages]:
        return [b.part for b, _, _ in self.slices]

    @property
    def sizes(self) -> list[int]:
        return [n for _, _, n in self.slices]

    def _blocks(self) -> list[HostBlock]:
        return list({id(b): b for b, _, _ in self.slices}.values())

    def settle(self) -> None:
        """Hold the copy as numpy arrays (numpy mode), releasing the device buffers. Waits for
        the gather: call it once the steps dispatched after the swap-out have been read."""
        for b in self._blocks():
            b.settle()

    def prefix(self, num_pages: int) -> HostKV:
        """A copy of its first `num_pages` pages that shares their blocks (nothing moves)."""
        if not 0 <= num_pages <= self.num_pages or self.released:
            raise ValueError(f"prefix of {num_pages} pages of a copy of {self.num_pages}")
        out, left = [], num_pages
        for b, first, n in self.slices:
            if left <= 0:
                break
            out.append((b, first, min(n, left)))
            left -= n
        copy = HostKV(out)
        for b in copy._blocks():
            b.refs += 1
        return copy

    @staticmethod
    def join(a: HostKV | None, b: HostKV | None) -> HostKV:
        """`a`'s pages then `b`'s, as one copy that takes over both copies' references."""
        parts = [x for x in (a, b) if x is not None]
        if any(x.released for x in parts):
            raise ValueError("join of a released host copy")
        seen: set[int] = set()
        for x in parts:
            for blk in x._blocks():
                if id(blk) in seen:  # the joined copy holds one reference to each block
                    blk.unref()
                seen.add(id(blk))
            x.released = True  # its references now belong to the joined copy
        return HostKV([s for x in parts for s in x.slices])

    def release(self) -> None:
        """Give its blocks back (each freed when no other copy holds it); once."""
        if self.released:
            raise AssertionError("host copy released twice")
        self.released = True
        for b in self._blocks():
            b.unref()


def _gather(kv: KVPages, idx: jax.Array) -> KVPages:
    get = lambda x: x.at[:, idx].get(mode="promise_in_bounds")  # noqa: E731
    return jax.tree.map(get, kv)


def _scatter(kv: KVPages, host: KVPages, idx: jax.Array) -> KVPages:
    put = lambda x, h: x.at[:, idx].set(h.astype(x.dtype), mode="promise_in_bounds")  # noqa: E731
    return jax.tree.map(put, kv, host)


TRANSFERS = ("gather", "groups", "pages")


def split_transfers(pages: Sequence[int], transfer: str) -> list[list[int]]:
    """The pages each transfer moves: all at once ("gather"), one contiguous run of page ids
    each ("groups", FastSwitch's block groups), or one page each ("pages", vLLM's swaps)."""
    if transfer == "gather":
        return [list(pages)]
    if transfer == "pages":
        return [[p] for p in pages]
    return [list(range(a, a + n)) for a, n in contiguous_runs(pages)]


class HostTier:
    def __init__(
        self,
        kv_sharding: KVPages,
        mode: str = "auto",
        transfer: str = "gather",
        budget_bytes: int | None = None,
    ):
        """kv_sharding: the pages' shardings (a `KVPages` of `NamedSharding`s).
        transfer: how a swap is cut into device<->host transfers (`split_transfers`): the
        default moves a request's pages as one gathered block; "groups" and "pages" are the
        block-group and per-page designs, kept to measure them against.
        budget_bytes: the most bytes of pages held at once (None: no limit); a swap-out
        beyond it raises `HostMemoryError` and copies nothing."""
        if budget_bytes is not None and budget_bytes < 0:
            raise ValueError(f"host budget must be >= 0 bytes or None, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.live_bytes = 0  # bytes of the pages of blocks not freed yet
        self.freed_blocks = 0
        if transfer not in TRANSFERS:
            raise ValueError(f"swap transfer must be one of {TRANSFERS}, not {transfer!r}")
        self.transfer = transfer
        if mode == "auto":
            mode = "numpy" if jax.default_backend() == "cpu" else "pinned_host"
        if mode not in ("numpy", "pinned_host"):
            raise ValueError(f"host tier mode must be auto, numpy or pinned_host, not {mode!r}")
        self.mode = mode
        self.device_sharding = kv_sharding
        self.host_sharding = jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), kv_sharding)
        self._gather = jax.jit(_gather, out_shardings=kv_sharding)
        self._scatter = jax.jit(_scatter, donate_argnums=(0,), out_shardings=kv_sharding)

    def _index(self, pages: Sequence[int]) -> np.ndarray:
        idx = np.full(pow2(len(pages)), NULL_PAGE, np.int32)
        idx[: len(pages)] = pages
        return idx

    def swap_out(self, kv: KVPages, pages: Sequence[int]) -> HostKV:
        """Dispatch a copy of `pages` of every layer to host; returns at once. The device pages
        may be reused by anything dispatched afterwards."""
        if not pages:
            raise ValueError("swap_out of zero pages")
        page_bytes = kv.nbytes // kv.num_pages
        need = len(pages) * page_bytes
        if self.budget_bytes is not None and self.live_bytes + need > self.budget_bytes:
            raise HostMemoryError(
                f"host tier: {need} more bytes would exceed its budget of {self.budget_bytes} "
                f"({self.live_bytes} held)"
            )
        slices = []
        for group in split_transfers(pages, self.transfer):
            copy = self._gather(kv, self._index(group))
            if self.mode == "numpy":
                for x in copy.k + copy.v:
                    x.copy_to_host_async()
            else:
                copy = jax.device_put(copy, self.host_sharding)
            slices.append((HostBlock(self, copy, len(group), page_bytes), 0, len(group)))
        self.live_bytes += need
        return HostKV(slices)

    def swap_in(self, kv: KVPages, host: HostKV, pages: Sequence[int]) -> KVPages:
        """Dispatch the write of a host copy into `pages` (newly allocated, as many as were
        swapped out); returns the new page arrays at once."""
        if len(pages) != host.num_pages:
            raise ValueError(f"swap_in of {host.num_pages} pages into {len(pages)} pages")
        if host.released:
            raise ValueError("swap_in of a released host copy")
        start = 0
        for block, first, n in host.slices:
            part = block.part
            # numpy or host arrays, or a gathered copy not settled yet: one input signature
            copy = jax.device_put(KVPages(tuple(part.k), tuple(part.v)), self.device_sharding)
            # the block's pages [first, first + n) go to their pages; the rest to the null page
            idx = np.full(part.k[0].shape[1], NULL_PAGE, np.int32)
            idx[first : first + n] = pages[start : start + n]
            kv = self._scatter(kv, copy, idx)
            start += n
        return kv
