"""Host tier: swapping a request's pages out and back in is bit-exact and touches nothing else."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxserve import sharding as shd
from jaxserve.kvcache.host import HostTier
from jaxserve.kvcache.pages import KVPages

LAYERS, SHAPE = 3, (4, 24, 4, 8)  # per layer: kv heads, pages, page size, head dim


def _shardings(mesh) -> KVPages:
    return shd.kv_sharding(mesh, [SHAPE] * LAYERS)


def _random_pages(sharding: KVPages, seed=0) -> KVPages:
    rs = np.random.RandomState(seed)
    k, v = (rs.randn(LAYERS, *SHAPE).astype(np.float32) for _ in range(2))
    return jax.device_put(KVPages(tuple(k), tuple(v)), sharding)


def _stacked(arrays) -> np.ndarray:
    """Per-layer arrays as one [L, K, P, S, D] numpy array (pages on axis 2)."""
    return np.stack([np.asarray(x) for x in arrays])


@pytest.mark.parametrize(
    "mode, mesh_spec, transfer",
    [
        ("numpy", None, "gather"),
        ("pinned_host", None, "gather"),
        ("numpy", "model:4", "gather"),
        ("pinned_host", "model:4", "gather"),
        ("numpy", None, "groups"),
        ("pinned_host", None, "pages"),
    ],
)
def test_swap_round_trip_is_bit_exact(mode, mesh_spec, transfer):
    mesh = shd.make_mesh(mesh_spec or "data:1")
    sharding = _shardings(mesh)
    if mesh_spec:
        assert sharding.k[0].spec == P("model", None, None, None)
    kv = _random_pages(sharding)
    before_k, before_v = _stacked(kv.k), _stacked(kv.v)
    tier = HostTier(sharding, mode, transfer)
    out_pages, in_pages = [3, 4, 5, 17, 9], [20, 21, 22, 1, 2]
    host = tier.swap_out(kv, out_pages)
    assert host.nbytes == 2 * len(out_pages) * LAYERS * 4 * 4 * 8 * 4
    # one transfer per block group ([3, 4, 5], [17], [9]) or per page, or one for all
    assert host.sizes == {"gather": [5], "groups": [3, 1, 1], "pages": [1] * 5}[transfer]
    # the host copy holds both caches of exactly those pages (V is not a copy of K)
    got_k = np.concatenate([_stacked(p.k)[:, :, :n] for p, n in zip(host.parts, host.sizes)], 2)
    got_v = np.concatenate([_stacked(p.v)[:, :, :n] for p, n in zip(host.parts, host.sizes)], 2)
    np.testing.assert_array_equal(got_k, before_k[:, :, out_pages])
    np.testing.assert_array_equal(got_v, before_v[:, :, out_pages])
    if mode == "pinned_host":
        assert all(p.k[0].sharding.memory_kind == "pinned_host" for p in host.parts)
    # the device pages are free for others now: overwrite them before swapping back
    kv = jax.tree.map(lambda x: x.at[:, out_pages].set(0.0), kv)
    kv = tier.swap_in(kv, host, in_pages)
    k, v = _stacked(kv.k), _stacked(kv.v)
    np.testing.assert_array_equal(k[:, :, in_pages], before_k[:, :, out_pages])
    np.testing.assert_array_equal(v[:, :, in_pages], before_v[:, :, out_pages])
    untouched = [p for p in range(1, 24) if p not in in_pages + out_pages]
    np.testing.assert_array_equal(k[:, :, untouched], before_k[:, :, untouched])
    np.testing.assert_array_equal(v[:, :, untouched], before_v[:, :, untouched])
    assert kv.k[0].sharding.is_equivalent_to(sharding.k[0], 4)


def test_swap_errors():
    sharding = _shardings(shd.make_mesh("data:1"))
    tier = HostTier(sharding, "numpy")
    kv = _random_pages(sharding)
    with pytest.raises(ValueError, match="zero pages"):
        tier.swap_out(kv, [])
    host = tier.swap_out(kv, [1, 2])
    with pytest.raises(ValueError, match="2 pages into 3"):
        tier.swap_in(kv, host, [5, 6, 7])
    with pytest.raises(ValueError, match="mode"):
        HostTier(sharding, "disk")
    with pytest.raises(ValueError, match="swap transfer must be one of"):
        HostTier(sharding, "numpy", "blocks")


def test_swap_programs_are_bucketed():
    from jaxserve.runner import CompileCounter

    sharding = _shardings(shd.make_mesh("data:1"))
    tier = HostTier(sharding, "numpy")
    kv = _random_pages(sharding)
    for n in (5, 6, 7, 8):  # one bucket of 8
        kv = tier.swap_in(kv, tier.swap_out(kv, list(range(1, n + 1))), list(range(9, 9 + n)))
    before = CompileCounter.count()
    for n in (5, 7):
        kv = tier.swap_in(kv, tier.swap_out(kv, list(range(1, n + 1))), list(range(9, 9 + n)))
    assert CompileCounter.count() == before
    assert all(jnp.isfinite(x).all() for x in kv.k)
