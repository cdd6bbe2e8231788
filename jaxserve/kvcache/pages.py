"""Device KV page storage: static arrays and the jitted-friendly read/write of tokens.

    k, v : [layers, pages, page_size, kv_heads, head_dim]

Page 0 is the null page: it is never handed out by an allocator, block-table entries that are
not in use point at it, and writes of padding tokens land in it. A token at absolute position
`p` of a sequence lives at page `block_table[p // page_size]`, slot `p % page_size`.

Layers with fewer KV heads than the widest layer (OpenELM) use a prefix of the head axis.
Everything here is a pure function of arrays, so it runs under `jax.jit` with the pages donated.

`ContiguousKV` is a copy of a few sequences' cache laid out for one-token decode steps: a
chunk of steps gathers it from the pages once, appends to it in place, and writes its new
tokens back at the end (`gather_contiguous`, `write_contiguous_layer`, `flush_contiguous`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxserve.config import ModelConfig

NULL_PAGE = 0


class KVPages(NamedTuple):
    k: jax.Array  # [layers, pages, page_size, kv_heads, head_dim]
    v: jax.Array  # [layers, pages, page_size, kv_heads, head_dim]

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    @property
    def page_size(self) -> int:
        return self.k.shape[2]


def pages_shape(config: ModelConfig, num_pages: int, page_size: int) -> tuple[int, ...]:
    return (config.num_layers, num_pages, page_size, config.max_kv_heads, config.head_dim)


def init_pages(
    config: ModelConfig,
    num_pages: int,
    page_size: int,
    dtype: str | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> KVPages:
    """Zeroed pages (`num_pages` includes the null page)."""
    if num_pages < 2:
        raise ValueError(f"num_pages must be >= 2 (page 0 is reserved), got {num_pages}")
    shape = pages_shape(config, num_pages, page_size)
    make = _zeros_fn(shape, jnp.dtype(dtype or config.dtype), sharding)
    return KVPages(make(), make())


@functools.lru_cache(maxsize=32)
def _zeros_fn(shape: tuple[int, ...], dtype, sharding):
    """One compiled zero-filler per pool shape, so a new engine on a warm runner compiles
    nothing."""
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


def token_slots(
    block_tables: jax.Array, positions: jax.Array, valid: jax.Array, page_size: int
) -> tuple[jax.Array, jax.Array]:
    """Page and slot of each token; invalid (padding) tokens go to the null page.

    block_tables: [B, max_pages] int32; positions, valid: [B, T]. Returns two [B, T] int32.
    """
    max_pages = block_tables.shape[1]
    idx = jnp.clip(positions // page_size, 0, max_pages - 1)
    page = jnp.take_along_axis(block_tables, idx, axis=1)
    page = jnp.where(valid, page, NULL_PAGE)
    slot = jnp.where(valid, positions % page_size, 0)
    return page.astype(jnp.int32), slot.astype(jnp.int32)


def write_layer(
    kv: KVPages, layer: int, page: jax.Array, slot: jax.Array, k: jax.Array, v: jax.Array
) -> KVPages:
    """Write new tokens' k, v ([B, T, kv_heads_l, head_dim]) of one layer into the pages."""
    h = k.shape[2]
    dtype = kv.k.dtype
    if h == kv.k.shape[3]:
        return KVPages(
            kv.k.at[layer, page, slot].set(k.astype(dtype)),
            kv.v.at[layer, page, slot].set(v.astype(dtype)),
        )
    return KVPages(
        kv.k.at[layer, page, slot, :h].set(k.astype(dtype)),
        kv.v.at[layer, page, slot, :h].set(v.astype(dtype)),
    )


def gather_layer(
    kv: KVPages, layer: int, block_tables: jax.Array, num_kv_heads: int
) -> tuple[jax.Array, jax.Array]:
    """A layer's cached k, v for each sequence: two [B, max_pages * page_size, kv_heads_l, hd]."""
    b, max_pages = block_tables.shape
    k = kv.k[layer, block_tables]  # [B, max_pages, page_size, H, D]
    v = kv.v[layer, block_tables]
    if num_kv_heads != kv.k.shape[3]:
        k, v = k[..., :num_kv_heads, :], v[..., :num_kv_heads, :]
    shape = (b, max_pages * kv.page_size, num_kv_heads, kv.k.shape[4])
    return k.reshape(shape), v.reshape(shape)


def write_all_layers(
    kv: KVPages,
    block_tables: jax.Array,
    positions: jax.Array,
    valid: jax.Array,
    ks: list[jax.Array],
    vs: list[jax.Array],
) -> KVPages:
    """Insert a whole cache for `[B, T]` tokens (every layer) at once.

    This is the insert path shared by a real prefill (which writes layer by layer through
    `write_layer`) and a predicted cache: ks[l], vs[l] are [B, T, kv_heads_l, head_dim], with
    keys already normed and rotated.
    """
    page, slot = token_slots(block_tables, positions, valid, kv.page_size)
    for layer, (k, v) in enumerate(zip(ks, vs)):
        kv = write_layer(kv, layer, page, slot, k, v)
    return kv


class ContiguousKV(NamedTuple):
    """Every layer's cache of `B` sequences, contiguous per KV head, for one-token decode steps.

    k[l]: [B * K_l, C, head_dim] and v[l]: [B * K_l, head_dim, C] for a layer with K_l KV
    heads; row `b * K_l + h` is head h of sequence b, and C (= max_pages * page_size, the
    block tables' reach) indexes positions. Both attention products then read the cache as
    it lies, one batched matrix product over the rows, where the pages would need a gather
    and a transpose per layer and step. Batch and heads share one axis because XLA:CPU copies
    a loop-carried array on every step when its leading axis has size 1.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def gather_contiguous(
    kv: KVPages, block_tables: jax.Array, kv_heads: Sequence[int]
) -> ContiguousKV:
    """Copy every layer's cache of the block tables' sequences out of the pages.

    kv_heads: the KV heads of each layer (a prefix of the pages' head axis).
    """
    ks, vs = [], []
    for layer, heads in enumerate(kv_heads):
        k, v = gather_layer(kv, layer, block_tables, heads)  # [B, C, K, D]
        b, c, _, d = k.shape
        ks.append(k.transpose(0, 2, 1, 3).reshape(b * heads, c, d))
        vs.append(v.transpose(0, 2, 3, 1).reshape(b * heads, d, c))
    return ContiguousKV(tuple(ks), tuple(vs))


def write_contiguous_layer(
    k_cache: jax.Array, v_cache: jax.Array, positions: jax.Array, k: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Write one token per sequence into a layer of a `ContiguousKV`.

    k, v: [B, 1, K, head_dim] (keys already normed and rotated); positions: [B]. One
    dynamic-update-slice per row, which XLA applies in place.
    """
    b, _, heads, d = k.shape
    new_k = k[:, 0].reshape(b * heads, 1, d).astype(k_cache.dtype)
    new_v = v[:, 0].reshape(b * heads, d, 1).astype(v_cache.dtype)
    zero = jnp.zeros((), positions.dtype)
    for row in range(b):
        first, pos = row * heads, positions[row]
        rows = slice(first, first + heads)
        k_cache = jax.lax.dynamic_update_slice(k_cache, new_k[rows], (first, pos, zero))
        v_cache = jax.lax.dynamic_update_slice(v_cache, new_v[rows], (first, zero, pos))
    return k_cache, v_cache


def flush_contiguous(
    kv: KVPages,
    block_tables: jax.Array,
    cache: ContiguousKV,
    start: jax.Array,
    end: jax.Array,
    max_tokens: int,
) -> KVPages:
    """Write back into the pages the tokens of positions `start[b] <= p < end[b]` of each row
    (at most `max_tokens` of them), the ones a chunk of decode steps appended to `cache`."""
    b = start.shape[0]
    positions = start[:, None] + jnp.arange(max_tokens, dtype=start.dtype)[None, :]  # [B, N]
    valid = positions < end[:, None]
    rows = jnp.arange(b)[:, None]
    ks, vs = [], []
    for k_cache, v_cache in zip(cache.k, cache.v):
        heads, c, d = k_cache.shape[0] // b, k_cache.shape[1], k_cache.shape[2]
        at = jnp.clip(positions, 0, c - 1)
        ks.append(k_cache.reshape(b, heads, c, d)[rows, :, at])  # [B, N, K, D]
        vs.append(v_cache.reshape(b, heads, d, c).transpose(0, 3, 1, 2)[rows, at])
    return write_all_layers(kv, block_tables, positions, valid, ks, vs)
