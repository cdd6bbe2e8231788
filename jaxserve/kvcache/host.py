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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxserve.kvcache.pages import NULL_PAGE, KVPages
from jaxserve.sched.allocator import contiguous_runs
from jaxserve.utils import pow2


@dataclasses.dataclass
class HostKV:
    """A request's pages on the host: one copy per transfer (`HostTier.transfer`), each a
    `KVPages` with pages on axis 1, padded to a power of two, `sizes[i]` of them real."""

    parts: list[KVPages]  # pinned_host arrays, or numpy once settled
    sizes: list[int]

    @property
    def num_pages(self) -> int:
        return sum(self.sizes)

    def settle(self) -> None:
        """Hold the copy as numpy arrays (numpy mode), releasing the device buffers. Waits for
        the gather: call it once the steps dispatched after the swap-out have been read."""
        for i, part in enumerate(self.parts):
            first = part.k[0]
            if isinstance(first, jax.Array) and first.sharding.memory_kind != "pinned_host":
                self.parts[i] = KVPages(*jax.device_get((part.k, part.v)))

    @property
    def nbytes(self) -> int:
        total = 0
        for part, n in zip(self.parts, self.sizes):
            total += sum(x.nbytes for x in part.k + part.v) // part.k[0].shape[1] * n
        return total


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
    def __init__(self, kv_sharding: KVPages, mode: str = "auto", transfer: str = "gather"):
        """kv_sharding: the pages' shardings (a `KVPages` of `NamedSharding`s).
        transfer: how a swap is cut into device<->host transfers (`split_transfers`): the
        default moves a request's pages as one gathered block; "groups" and "pages" are the
        block-group and per-page designs, kept to measure them against."""
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
        parts, sizes = [], []
        for group in split_transfers(pages, self.transfer):
            copy = self._gather(kv, self._index(group))
            if self.mode == "numpy":
                for x in copy.k + copy.v:
                    x.copy_to_host_async()
            else:
                copy = jax.device_put(copy, self.host_sharding)
            parts.append(copy)
            sizes.append(len(group))
        return HostKV(parts, sizes)

    def swap_in(self, kv: KVPages, host: HostKV, pages: Sequence[int]) -> KVPages:
        """Dispatch the write of a host copy into `pages` (newly allocated, as many as were
        swapped out); returns the new page arrays at once."""
        if len(pages) != host.num_pages:
            raise ValueError(f"swap_in of {host.num_pages} pages into {len(pages)} pages")
        start = 0
        for part, n in zip(host.parts, host.sizes):
            # numpy or host arrays, or a gathered copy not settled yet: one input signature
            copy = jax.device_put(KVPages(tuple(part.k), tuple(part.v)), self.device_sharding)
            kv = self._scatter(kv, copy, self._index(pages[start : start + n]))
            start += n
        return kv
