"""The model's paged attention: the Pallas kernel path against the XLA path, and the
strategy that picks one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve import sharding as shd
from jaxserve.kvcache.pages import KVPages
from jaxserve.models.attention import PagedAttention
from jaxserve.strategy import DecodeStrategy, default_kernel

HEADS, KV_HEADS, DIM, PAGES, PAGE = 8, 2, 16, 20, 4


def _inputs(lengths, width, seed=0):
    """A random layer of pages, disjoint block tables, one query per row at the end of its
    sequence (its own k, v written there by the call)."""
    rs = np.random.RandomState(seed)
    b = len(lengths)
    pages = KVPages(
        (jnp.asarray(rs.randn(KV_HEADS, PAGES, PAGE, DIM), jnp.float32),),
        (jnp.asarray(rs.randn(KV_HEADS, PAGES, PAGE, DIM), jnp.float32),),
    )
    order = rs.permutation(np.arange(1, PAGES))[: b * width].reshape(b, width)
    q, k, v = (
        jnp.asarray(rs.randn(b, 1, h, DIM), jnp.float32) for h in (HEADS, KV_HEADS, KV_HEADS)
    )
    lengths = jnp.asarray(lengths, jnp.int32)
    positions = (lengths - 1)[:, None]
    return q, k, v, pages, jnp.asarray(order, jnp.int32), positions, lengths


@pytest.mark.parametrize(
    "lengths, width",
    # batch 1, a small batch, and a large one whose 3-page tables the kernel pads to 4
    [([9], 4), ([1, 16, 7], 4), ([5, 12, 3, 8, 11], 3)],
    ids=["b1", "b3", "b5"],
)
def test_pallas_gpu_kernel_equals_xla_path(lengths, width):
    args = _inputs(lengths, width)
    want, want_kv = jax.jit(PagedAttention("xla"), static_argnums=0)(0, *args)
    kernel = PagedAttention("pallas_gpu", interpret=True)
    q, _, _, pages, bt, _, lens = args
    assert kernel._kernel(q[:, 0], pages.k[0], pages.v[0], bt, lens) is not None  # no fallback
    got, got_kv = jax.jit(kernel, static_argnums=0)(0, *args)
    assert got.shape == want.shape == (len(lengths), 1, HEADS, DIM)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # both wrote the new token in the same slot
    for a, b in zip(jax.tree.leaves(got_kv), jax.tree.leaves(want_kv)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_prefix_attention_only_reads_each_rows_own_pages_up_to_its_length():
    q, k, v, pages, bt, positions, lengths = _inputs([6, 11], 3)
    attention = jax.jit(PagedAttention("xla"), static_argnums=0)
    want, _ = attention(0, q, k, v, pages, bt, positions, lengths)
    # scribble over every page the rows do not own, and over row 0's slots past its length
    owned = set(np.asarray(bt).ravel().tolist())
    junk = [p for p in range(PAGES) if p not in owned]
    noisy = jax.tree.map(lambda x: x.at[:, junk].set(1e3), pages)
    last = int(bt[0, 1])  # row 0's second page holds positions 4..7; 6 and 7 are unused
    noisy = jax.tree.map(lambda x: x.at[:, last, 2:].set(-1e3), noisy)
    got, _ = attention(0, q, k, v, noisy, bt, positions, lengths)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_strategy_defaults_and_checks():
    state = {}
    cpu = shd.make_mesh("data:1")
    assert default_kernel(cpu) == "xla"
    chosen = DecodeStrategy.choose(cpu, state, out_in_weights=False)
    assert chosen.kernel == "xla" and chosen.contiguous
    assert chosen.contiguous_for(1, 4) and not chosen.contiguous_for(1, 1)
    assert not chosen.contiguous_for(8, 4)
    mesh = shd.make_mesh("data:2")
    assert not DecodeStrategy.choose(mesh, state, out_in_weights=False).contiguous
    with pytest.raises(ValueError, match="one-device mesh"):
        DecodeStrategy.choose(mesh, state, kernel="pallas_gpu")
    with pytest.raises(ValueError, match="kernel must be one of"):
        DecodeStrategy.choose(cpu, state, kernel="flash")
