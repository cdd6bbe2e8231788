"""Host tier: swapping a request's pages out and back in is bit-exact and touches nothing else."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxserve import sharding as shd
from jaxserve.kvcache.host import HostTier
from jaxserve.kvcache.pages import KVPages


def _random_pages(sharding, shape=(3, 24, 4, 4, 8), seed=0) -> KVPages:
    rs = np.random.RandomState(seed)
    k, v = (rs.randn(*shape).astype(np.float32) for _ in range(2))
    return KVPages(jax.device_put(k, sharding), jax.device_put(v, sharding))


@pytest.mark.parametrize("mode", ["numpy", "pinned_host"])
@pytest.mark.parametrize("mesh_spec", [None, "model:4"])
def test_swap_round_trip_is_bit_exact(mode, mesh_spec):
    mesh = shd.make_mesh(mesh_spec or "data:1")
    sharding = shd.kv_sharding(mesh, (3, 24, 4, 4, 8))
    if mesh_spec:
        assert sharding.spec == P(None, None, None, "model", None)
    kv = _random_pages(sharding)
    before_k, before_v = np.array(kv.k), np.array(kv.v)
    tier = HostTier(sharding, mode)
    out_pages, in_pages = [3, 4, 5, 17, 9], [20, 21, 22, 1, 2]
    host = tier.swap_out(kv, out_pages)
    assert host.nbytes == 2 * len(out_pages) * 3 * 4 * 4 * 8 * 4
    # the host copy holds both caches of exactly those pages (V is not a copy of K)
    np.testing.assert_array_equal(np.asarray(host.k)[:, : len(out_pages)], before_k[:, out_pages])
    np.testing.assert_array_equal(np.asarray(host.v)[:, : len(out_pages)], before_v[:, out_pages])
    if mode == "pinned_host":
        assert host.k.sharding.memory_kind == "pinned_host"
    # the device pages are free for others now: overwrite them before swapping back
    kv = KVPages(kv.k.at[:, out_pages].set(0.0), kv.v.at[:, out_pages].set(0.0))
    kv = tier.swap_in(kv, host, in_pages)
    k, v = np.array(kv.k), np.array(kv.v)
    np.testing.assert_array_equal(k[:, in_pages], before_k[:, out_pages])
    np.testing.assert_array_equal(v[:, in_pages], before_v[:, out_pages])
    untouched = [p for p in range(1, 24) if p not in in_pages + out_pages]
    np.testing.assert_array_equal(k[:, untouched], before_k[:, untouched])
    np.testing.assert_array_equal(v[:, untouched], before_v[:, untouched])
    assert kv.k.sharding.is_equivalent_to(sharding, 5)


def test_swap_errors():
    sharding = NamedSharding(shd.make_mesh("data:1"), P())
    tier = HostTier(sharding, "numpy")
    kv = _random_pages(sharding)
    with pytest.raises(ValueError, match="zero pages"):
        tier.swap_out(kv, [])
    host = tier.swap_out(kv, [1, 2])
    with pytest.raises(ValueError, match="2 pages into 3"):
        tier.swap_in(kv, host, [5, 6, 7])
    with pytest.raises(ValueError, match="mode"):
        HostTier(sharding, "disk")


def test_swap_programs_are_bucketed():
    from jaxserve.runner import CompileCounter

    sharding = NamedSharding(shd.make_mesh("data:1"), P())
    tier = HostTier(sharding, "numpy")
    kv = _random_pages(sharding)
    for n in (5, 6, 7, 8):  # one bucket of 8
        kv = tier.swap_in(kv, tier.swap_out(kv, list(range(1, n + 1))), list(range(9, 9 + n)))
    before = CompileCounter.count()
    for n in (5, 7):
        kv = tier.swap_in(kv, tier.swap_out(kv, list(range(1, n + 1))), list(range(9, 9 + n)))
    assert CompileCounter.count() == before
    assert jnp.isfinite(kv.k).all()
