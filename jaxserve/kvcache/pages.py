"""Device KV page storage: static arrays and the jitted-friendly read/write of tokens.

    k[l], v[l] : [kv_heads_l, pages, page_size, head_dim]     one pair of arrays per layer

Heads-major and one array per layer: the layout the paged-attention kernels JAX ships take
as they are (Pallas ops for GPU and TPU read `[kv_heads, pages, page_size, head_dim]`), so a
kernel reads a layer's pages in place, where a slice of one [layers, ...] array would be
copied first. Each layer has its own number of KV heads (OpenELM's vary), so no memory is
spent on padding heads.

Page 0 is the null page: it is never handed out by an allocator, block-table entries that are
not in use point at it, and writes of padding tokens land in it. A token at absolute position
`p` of a sequence lives at page `block_table[p // page_size]`, slot `p % page_size`.
Everything here is a pure function of arrays, so it runs under `jax.jit` with the pages donated.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxserve.config import ModelConfig

NULL_PAGE = 0


class KVPages(NamedTuple):
    k: tuple[jax.Array, ...]  # per layer [kv_heads_l, pages, page_size, head_dim]
    v: tuple[jax.Array, ...]

    @property
    def num_pages(self) -> int:
        return self.k[0].shape[1]

    @property
    def page_size(self) -> int:
        return self.k[0].shape[2]

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in self.k + self.v)

    def block_until_ready(self) -> KVPages:
        jax.block_until_ready(self.k + self.v)
        return self


def layer_shapes(config: ModelConfig, num_pages: int, page_size: int) -> list[tuple[int, ...]]:
    """The shape of each layer's K (and V) array."""
    return [(h, num_pages, page_size, config.head_dim) for h in config.num_kv_heads]


def init_pages(
    config: ModelConfig,
    num_pages: int,
    page_size: int,
    dtype: str | None = None,
    sharding: KVPages | None = None,
) -> KVPages:
    """Zeroed pages (`num_pages` includes the null page); `sharding`: one per array."""
    if num_pages < 2:
        raise ValueError(f"num_pages must be >= 2 (page 0 is reserved), got {num_pages}")
    shapes = tuple(layer_shapes(config, num_pages, page_size))
    dtype = jnp.dtype(dtype or config.dtype)
    return _zeros_fn(shapes, dtype, sharding)()


@functools.lru_cache(maxsize=32)
def _zeros_fn(shapes: tuple[tuple[int, ...], ...], dtype, sharding):
    """One compiled zero-filler per pool shape, so a new engine on a warm runner compiles
    nothing."""

    def zeros():
        return KVPages(
            tuple(jnp.zeros(s, dtype) for s in shapes), tuple(jnp.zeros(s, dtype) for s in shapes)
        )

    return jax.jit(zeros, out_shardings=sharding)


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


def _set_layer(pages: tuple[jax.Array, ...], layer: int, new: jax.Array, page, slot):
    """pages[layer] with new [B, T, K, D] written at (page, slot) [B, T]."""
    x = pages[layer]
    x = x.at[:, page, slot].set(new.transpose(2, 0, 1, 3).astype(x.dtype))
    return pages[:layer] + (x,) + pages[layer + 1 :]


def write_layer(
    kv: KVPages, layer: int, page: jax.Array, slot: jax.Array, k: jax.Array, v: jax.Array
) -> KVPages:
    """Write new tokens' k, v ([B, T, kv_heads_l, head_dim]) of one layer into the pages."""
    return KVPages(_set_layer(kv.k, layer, k, page, slot), _set_layer(kv.v, layer, v, page, slot))


def gather_layer(kv: KVPages, layer: int, block_tables: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A layer's cached k, v for each sequence: two [kv_heads_l, B, max_pages * page_size, hd]."""
    b, max_pages = block_tables.shape
    k, v = kv.k[layer][:, block_tables], kv.v[layer][:, block_tables]  # [K, B, n, S, D]
    shape = (k.shape[0], b, max_pages * kv.page_size, k.shape[-1])
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
