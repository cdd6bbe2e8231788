"""Attention: dense grouped-query attention, and the model's one paged attention.

    attend(q, k, v, mask) ...... full sequence (training, scoring) and a prefill's new tokens
    PagedAttention(kernel) ..... write the new tokens' k, v into the pages, then attend over
                                 each sequence's cached prefix

`PagedAttention` is the only place the model touches KV pages. Its `kernel` says how the
cached prefix is read:
  * "xla": the pages of each sequence are gathered and attended with plain jnp, on any
    backend and any mesh (the reference);
  * "pallas_gpu" / "pallas_tpu": one-token decode steps call the paged-attention kernel JAX
    ships for that backend (`jax.experimental.pallas.ops.{gpu,tpu}.paged_attention`), which
    reads the pages in place through the block tables. Steps of several tokens per row
    (chunked prefill, scoring) and shapes the kernel does not take use the XLA path.
`interpret=True` runs a Pallas kernel in the Pallas interpreter, so its equivalence with the
XLA path is tested on the CPU.
A runner picks the kernel once (`jaxserve.strategy.DecodeStrategy`); the model just calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxserve.kvcache.pages import KVPages, gather_layer, token_slots, write_layer

KERNELS = ("xla", "pallas_gpu", "pallas_tpu")
# One-query decode batches of at least this many rows attend by multiply-and-reduce over the
# gathered pages; smaller ones by matrix products.
REDUCE_MIN_BATCH = 4


def _grouped(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, kv: str) -> jax.Array:
    """Grouped-query attention by matrix products; `kv` names the axes of k and v (B batch,
    S key position, K KV head, D head dim). Returns [B, T, H, D]."""
    b, t, h, d = q.shape
    kh = k.shape[kv.index("K")]
    q = q.reshape(b, t, kh, h // kh, d)  # [B, T, K, G, D]
    scores = jnp.einsum(f"BTKGD,{kv}->BKGTS", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None], scores * (d**-0.5), -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum(f"BKGTS,{kv}->BTKGD", probs, v).reshape(b, t, h, d)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention.

    q: [B, T, H, D]; k, v: [B, S, K, D] with H a multiple of K; mask: [B, T, S] (True = attend).
    Returns [B, T, H, D].
    """
    return _grouped(q, k, v, mask, "BSKD")


def attend_heads_major(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attend` over gathered pages: k, v [K, B, S, D] (as `gather_layer` returns them)."""
    b, t, h, d = q.shape
    if t == 1 and b >= REDUCE_MIN_BATCH:
        # one query per row (batched decode): multiply-and-reduce fuses into one pass over
        # the cache, where XLA:CPU runs the einsum as B*K tiny matrix products
        kh = k.shape[0]
        qs = q.reshape(b, kh, h // kh, 1, d).astype(jnp.float32)  # [B, K, G, 1, D]
        kt = k.astype(jnp.float32).transpose(1, 0, 2, 3)[:, :, None]  # [B, K, 1, S, D]
        scores = jnp.sum(qs * kt, axis=-1)[:, :, :, None, :] * (d**-0.5)  # [B, K, G, 1, S]
        scores = jnp.where(mask[:, None, None], scores, -1e30)
        probs = jax.nn.softmax(scores, axis=-1)[:, :, :, 0, :, None]  # [B, K, G, S, 1]
        vt = v.astype(jnp.float32).transpose(1, 0, 2, 3)[:, :, None]  # [B, K, 1, S, D]
        return jnp.sum(probs * vt, axis=3).reshape(b, 1, h, d).astype(v.dtype)
    return _grouped(q, k, v, mask, "KBSD")


def _pow2_ceil(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _splits(pages: int, most: int) -> int:
    """The largest power of two <= `most` dividing `pages`."""
    n = 1
    while n * 2 <= most and pages % (n * 2) == 0:
        n *= 2
    return n


@dataclass(frozen=True)
class PagedAttention:
    """Write then attend over paged KV (see the module docstring). Hashable and static: a
    runner passes it to the model inside its jitted step functions."""

    kernel: str = "xla"
    interpret: bool = False  # run a Pallas kernel in the interpreter (tests, CPU)

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"attention kernel must be one of {KERNELS}, not {self.kernel!r}")

    def __call__(
        self,
        layer: int,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        kv: KVPages,
        block_tables: jax.Array,
        positions: jax.Array,
        seq_lens: jax.Array,
        prefix: bool = True,
    ) -> tuple[jax.Array, KVPages]:
        """q [B, T, H, D]; k, v [B, T, K, D] of the new tokens at `positions` [B, T] (valid
        below `seq_lens` [B], the sequence lengths including them). With `prefix`, queries
        attend to everything cached up to their position; without, only to the new tokens
        (a prefill from position 0). Returns [B, T, H, D] and the pages written."""
        valid = positions < seq_lens[:, None]  # [B, T]
        page, slot = token_slots(block_tables, positions, valid, kv.page_size)
        kv = write_layer(kv, layer, page, slot, k, v)
        if not prefix:
            mask = (positions[:, None, :] <= positions[:, :, None]) & valid[:, None, :]
            return attend(q, k, v, mask), kv
        if q.shape[1] == 1 and self.kernel != "xla":
            y = self._kernel(q[:, 0], kv.k[layer], kv.v[layer], block_tables, seq_lens)
            if y is not None:
                return y[:, None], kv
        kc, vc = gather_layer(kv, layer, block_tables)
        k_pos = jnp.arange(kc.shape[2], dtype=positions.dtype)[None, None, :]
        mask = (k_pos <= positions[:, :, None]) & (k_pos < seq_lens[:, None, None])
        return attend_heads_major(q, kc.astype(q.dtype), vc.astype(q.dtype), mask), kv

    def _kernel(self, q, k_pages, v_pages, block_tables, lengths) -> jax.Array | None:
        """One decode step through a Pallas kernel: q [B, H, D]; None where the kernel does
        not take these shapes (the caller then uses the XLA path)."""
        pages = block_tables.shape[1]
        dtype = q.dtype
        q = (q * q.shape[-1] ** -0.5).astype(k_pages.dtype)  # the kernels do not scale
        lengths = lengths.astype(jnp.int32)
        if self.kernel == "pallas_gpu":
            from jax.experimental.pallas.ops.gpu import paged_attention as gpu

            # Triton's dot needs blocks of >= 16 keys: whole pages per compute block, the
            # block tables padded with the null page (masked by `lengths`) to whole blocks
            page_size = k_pages.shape[2]
            per_block = max(min(_pow2_ceil(pages), 8), _pow2_ceil(-(-16 // page_size)))
            if k_pages.shape[-1] % 16:
                return None
            padded = -(-pages // per_block) * per_block
            if padded != pages:
                block_tables = jnp.pad(block_tables, ((0, 0), (0, padded - pages)))
            k_splits = _splits(padded // per_block, 16)
            y = gpu.paged_attention(
                q,
                k_pages,
                v_pages,
                block_tables,
                lengths,
                block_h=16,
                pages_per_compute_block=per_block,
                k_splits=k_splits,
                interpret=self.interpret,
            )
            return y.astype(dtype)
        from jax.experimental.pallas.ops.tpu import paged_attention as tpu

        # the TPU kernel tiles head_dim by 128 lanes and needs a whole number of blocks
        if k_pages.shape[-1] % 128 or self.interpret:
            return None
        y = tpu.paged_attention(
            q, k_pages, v_pages, lengths, block_tables, pages_per_compute_block=_splits(pages, 8)
        )
        return y.astype(dtype)
