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


@pytest.mark.parametrize("transfer", ["gather", "groups", "pages"])
def test_a_second_swap_out_copies_only_the_pages_written_since(transfer):
    """A request swapped out with 18 tokens (5 pages of 4), swapped back in, then grown to
    26 tokens (7 pages): its second swap-out moves only the pages the host lacks (the
    partial fifth page and the two new ones), the 4 full pages stay shared, the joined copy
    comes back exact, and every block is freed exactly once."""
    from types import SimpleNamespace

    from jaxserve.sched import SchedulerConfig
    from jaxserve.switch import ContextSwitch

    sharding = _shardings(shd.make_mesh("data:1"))
    tier = HostTier(sharding, "numpy", transfer)
    cfg = SchedulerConfig(max_batch=1, num_pages=SHAPE[1], page_size=SHAPE[2], max_seq_len=96)
    switch = ContextSwitch(SimpleNamespace(sched_config=cfg, host=tier))
    kv = _random_pages(sharding)
    page = kv.nbytes // kv.num_pages
    host, moved = switch.copy_out(kv, "r", [1, 2, 3, 4, 5])
    assert moved == 5 * page and tier.live_bytes == 5 * page
    back = [6, 7, 8, 9, 10]
    kv = tier.swap_in(kv, host, back)
    switch.retain("r", host, 18)  # 4 full pages stay valid on the host
    assert switch.on_host["r"].num_pages == 4
    # decoding writes the rest of page 10 and pages 11 and 12
    rs = np.random.RandomState(1)
    new = lambda x: x.at[:, 10:13].set(rs.randn(*x[:, 10:13].shape))  # noqa: E731
    kv = KVPages(tuple(map(new, kv.k)), tuple(map(new, kv.v)))
    want_k, want_v = _stacked(kv.k)[:, :, 6:13], _stacked(kv.v)[:, :, 6:13]
    host, moved = switch.copy_out(kv, "r", back + [11, 12])
    assert moved == 3 * page and host.num_pages == 7 and host.nbytes == 7 * page
    assert switch.bytes_out == 8 * page and switch.bytes_not_copied == 4 * page
    assert "r" not in switch.on_host
    host.settle()
    kv = tier.swap_in(kv, host, list(range(13, 20)))
    np.testing.assert_array_equal(_stacked(kv.k)[:, :, 13:20], want_k)
    np.testing.assert_array_equal(_stacked(kv.v)[:, :, 13:20], want_v)
    host.release()
    assert tier.live_bytes == 0
    with pytest.raises(AssertionError, match="twice"):
        host.release()


def test_a_host_budget_refuses_a_copy_it_cannot_hold():
    from jaxserve.kvcache.host import HostMemoryError

    sharding = _shardings(shd.make_mesh("data:1"))
    kv = _random_pages(sharding)
    page = kv.nbytes // kv.num_pages
    tier = HostTier(sharding, "numpy", budget_bytes=4 * page)
    held = tier.swap_out(kv, [1, 2, 3])
    with pytest.raises(HostMemoryError, match="budget"):
        tier.swap_out(kv, [4, 5])
    assert tier.live_bytes == 3 * page  # the refused copy took nothing
    held.release()
    tier.swap_out(kv, [4, 5, 6, 7]).release()
    assert tier.live_bytes == 0
