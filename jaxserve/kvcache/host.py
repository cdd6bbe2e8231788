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
from jaxserve.utils import pow2


@dataclasses.dataclass
class HostKV:
    k: tuple  # per layer [kv_heads, n_bucket, page_size, head_dim]: pinned_host or numpy
    v: tuple
    num_pages: int  # real pages; the rest of the bucket is padding

    def settle(self) -> None:
        """Hold the copy as numpy arrays (numpy mode), releasing the device buffers. Waits for
        the gather: call it once the steps dispatched after the swap-out have been read."""
        first = self.k[0]
        if isinstance(first, jax.Array) and first.sharding.memory_kind != "pinned_host":
            self.k, self.v = jax.device_get((self.k, self.v))

    @property
    def nbytes(self) -> int:
        bucket = self.k[0].shape[1]
        return sum(x.nbytes for x in self.k + self.v) // bucket * self.num_pages


def _gather(kv: KVPages, idx: jax.Array) -> KVPages:
    get = lambda x: x.at[:, idx].get(mode="promise_in_bounds")  # noqa: E731
    return jax.tree.map(get, kv)


def _scatter(kv: KVPages, host: KVPages, idx: jax.Array) -> KVPages:
    put = lambda x, h: x.at[:, idx].set(h.astype(x.dtype), mode="promise_in_bounds")  # noqa: E731
    return jax.tree.map(put, kv, host)


class HostTier:
    def __init__(self, kv_sharding: KVPages, mode: str = "auto"):
        """kv_sharding: the pages' shardings (a `KVPages` of `NamedSharding`s)."""
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
        copy = self._gather(kv, self._index(pages))
        if self.mode == "numpy":
            for x in copy.k + copy.v:
                x.copy_to_host_async()
        else:
            copy = jax.device_put(copy, self.host_sharding)
        return HostKV(copy.k, copy.v, len(pages))

    def swap_in(self, kv: KVPages, host: HostKV, pages: Sequence[int]) -> KVPages:
        """Dispatch the write of a host copy into `pages` (newly allocated, as many as were
        swapped out); returns the new page arrays at once."""
        if len(pages) != host.num_pages:
            raise ValueError(f"swap_in of {host.num_pages} pages into {len(pages)} pages")
        # numpy or host arrays, or a gathered copy not settled yet: one input signature
        copy = jax.device_put(KVPages(tuple(host.k), tuple(host.v)), self.device_sharding)
        return self._scatter(kv, copy, self._index(pages))
