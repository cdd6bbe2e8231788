"""Synthetic workloads: arrival processes, fitted length distributions, make_workload."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxserve import workload as wl
from jaxserve.workload import TraceRequest, WorkloadError

# ----------------------------------------------------------------------------- arrivals


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: wl.poisson_arrivals(3.0, 100, rng),
        lambda rng: wl.gamma_arrivals(3.0, 2.0, 100, rng),
        lambda rng: wl.burst_arrivals(3.0, 4, 100, rng),
    ],
)
def test_arrivals_seeded_sorted_positive(make):
    a = make(np.random.default_rng(7))
    np.testing.assert_array_equal(a, make(np.random.default_rng(7)))
    assert not np.array_equal(a, make(np.random.default_rng(8)))
    assert a.shape == (100,) and np.all(np.diff(a) >= 0) and a[0] > 0


@pytest.mark.parametrize("kind", ["poisson", "gamma", "burst"])
def test_arrivals_mean_rate(kind):
    n, rate = 200_000, 5.0
    a = wl.arrivals(kind, rate, n, np.random.default_rng(0), cv=3.0, burst_size=5)
    assert n / a[-1] == pytest.approx(rate, rel=0.03)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_cv(cv):
    gaps = np.diff(wl.gamma_arrivals(2.0, cv, 300_000, np.random.default_rng(1)), prepend=0.0)
    assert gaps.mean() == pytest.approx(0.5, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_poisson_is_exponential():
    gaps = np.diff(wl.poisson_arrivals(4.0, 200_000, np.random.default_rng(2)), prepend=0.0)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)


def test_bursts_share_instants():
    a = wl.burst_arrivals(10.0, 4, 10, np.random.default_rng(0))
    assert len(set(a[:4])) == 1 and len(set(a[4:8])) == 1 and len(set(a[8:])) == 1
    assert a[3] < a[4] < a[8]


def test_infinite_rate_is_offline_batch():
    np.testing.assert_array_equal(wl.poisson_arrivals(math.inf, 5, np.random.default_rng()), 0)


@pytest.mark.parametrize("rate", [0, -1.0, float("nan"), "3"])
def test_bad_rate(rate):
    with pytest.raises(WorkloadError, match="rate"):
        wl.poisson_arrivals(rate, 3, np.random.default_rng())


def test_unknown_arrival_kind():
    with pytest.raises(WorkloadError, match="arrival"):
        wl.arrivals("uniform", 1.0, 3, np.random.default_rng())


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize(
    "dist, mean_prompt, mean_output",
    [(wl.sharegpt_synth(), 161.31, 337.99), (wl.alpaca_synth(), 19.31, 58.45)],
)
def test_length_means_match_published(dist, mean_prompt, mean_output):
    p, o = dist.sample(200_000, np.random.default_rng(0))
    assert p.dtype == np.int64 and p.min() >= 1 and o.min() >= 1
    assert p.mean() == pytest.approx(mean_prompt, rel=0.1)
    assert o.mean() == pytest.approx(mean_output, rel=0.1)


def test_sharegpt_heavier_tailed_than_alpaca():
    rng = np.random.default_rng(0)
    s, _ = wl.ShareGPTSynth().sample(50_000, rng)
    a, _ = wl.AlpacaSynth().sample(50_000, rng)
    assert np.percentile(s, 99) / s.mean() > np.percentile(a, 99) / a.mean()


def test_length_scale_and_clip():
    dist = wl.ShareGPTSynth(scale=0.1, max_prompt_len=20, max_output_len=30)
    p, o = dist.sample(20_000, np.random.default_rng(3))
    assert p.min() >= 1 and p.max() == 20 and o.min() >= 1 and o.max() == 30
    p1, _ = wl.ShareGPTSynth(scale=0.1).sample(20_000, np.random.default_rng(3))
    assert p1.mean() == pytest.approx(16.1, rel=0.1)


def test_length_seeded():
    a = wl.AlpacaSynth().sample(10, np.random.default_rng(5))
    b = wl.AlpacaSynth().sample(10, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- make_workload


def test_make_workload_synthetic():
    reqs = wl.make_workload("alpaca_synth", rate=2.0, num_requests=50, seed=1, max_output_len=40)
    assert len(reqs) == 50 and [r.id for r in reqs] == [f"r{i}" for i in range(50)]
    assert all(r.output_len <= 40 for r in reqs)
    assert [r.arrival for r in reqs] == sorted(r.arrival for r in reqs)
    again = wl.make_workload("alpaca_synth", rate=2.0, num_requests=50, seed=1, max_output_len=40)
    assert reqs == again


def test_make_workload_rate_sweep_keeps_lengths():
    """Arrivals and lengths come from separate streams: same requests at every rate."""
    slow = wl.make_workload("sharegpt_synth", 1.0, 30, seed=4)
    fast = wl.make_workload("sharegpt_synth", 8.0, 30, seed=4, arrival="gamma", cv=2.0)
    assert [(r.prompt_len, r.output_len) for r in slow] == [
        (r.prompt_len, r.output_len) for r in fast
    ]
    assert fast[-1].arrival < slow[-1].arrival


def test_make_workload_client_ids():
    reqs = wl.make_workload("alpaca_synth", 1.0, 3, client="alice")
    assert [r.id for r in reqs] == ["alice-0", "alice-1", "alice-2"]
    assert {r.client for r in reqs} == {"alice"}


@pytest.mark.parametrize(
    "spec, kwargs, match",
    [
        ("lmsys", {}, "name_or_path"),
        ("data.csv", {}, "name_or_path"),
        ("alpaca_synth", {"arrival": "uniform"}, "arrival"),
        ("alpaca_synth", {"rate": None}, "rate"),
        ("alpaca_synth", {"num_requests": None}, "num_requests"),
        ("alpaca_synth", {"num_requests": -1}, "num_requests"),
        ("missing.json", {}, "file not found"),
    ],
)
def test_make_workload_errors(spec, kwargs, match):
    args = {"rate": 1.0, "num_requests": 5} | kwargs
    with pytest.raises(WorkloadError, match=match):
        wl.make_workload(spec, **args)


def test_make_workload_trace(tmp_path):
    path = tmp_path / "t.jsonl"
    wl.write_trace(path, [TraceRequest(f"q{i}", float(i), 3, 2) for i in range(5)])
    assert [r.arrival for r in wl.make_workload(path, None, None)] == [0, 1, 2, 3, 4]
    faster = wl.make_workload(path, rate=4.0, num_requests=3)
    assert [r.arrival for r in faster] == [0.0, 0.25, 0.5]


def test_synthetic_length_params_reach_the_distribution():
    from jaxserve.workload import WorkloadError, make_workload

    kw = dict(scale=0.5, max_output_len=5000)
    base = make_workload("sharegpt_synth", 10, 400, 0, **kw)
    heavy = make_workload("sharegpt_synth", 10, 400, 0, length_params={"sigma_output": 2.0}, **kw)
    assert [r.prompt_len for r in heavy] == [r.prompt_len for r in base]
    out = lambda rs: np.array([r.output_len for r in rs])  # noqa: E731
    assert out(heavy).std() / out(heavy).mean() > 1.5 * out(base).std() / out(base).mean()
    with pytest.raises(WorkloadError, match="length_params"):
        make_workload("sharegpt_synth", 10, 4, 0, length_params={"no_such": 1})
