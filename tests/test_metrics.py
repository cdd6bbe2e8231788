"""Metrics: hand-computed summaries, percentile convention, SLOs, fairness, JSON, plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxserve import metrics
from jaxserve.metrics import RequestRecord


def _records() -> list[RequestRecord]:
    """Four requests (two clients); times in seconds.

    id  client arrival prompt out  token_times       finish  state
    r1  a      0.0     4      3    [1.0, 1.5, 2.5]   2.5     finished (1 preemption, swaps)
    r2  b      1.0     5      2    [2.0, 3.5]        3.5     finished
    r3  a      2.0     2      1    [5.0]             5.0     finished
    r4  b      3.0     6      0    []                -       rejected
    """
    return [
        RequestRecord(
            "r1",
            0.0,
            4,
            3,
            1.0,
            2.5,
            [1.0, 1.5, 2.5],
            preemptions=1,
            swapped_bytes=100,
            swap_time=0.1,
            stall_time=0.2,
            client="a",
        ),
        RequestRecord("r2", 1.0, 5, 2, 2.0, 3.5, [2.0, 3.5], client="b"),
        RequestRecord(
            "r3", 2.0, 2, 1, 5.0, 5.0, [5.0], preemptions=2, swapped_bytes=50, client="a"
        ),
        RequestRecord("r4", 3.0, 6, 0, None, None, [], client="b", state="rejected"),
    ]


def test_summary_by_hand():
    """Finished: r1, r2, r3 (r4 is rejected and only counts where said).

    JCT  = [2.5, 2.5, 3.0]: mean 8/3; sorted, p-th percentile at index 2p/100:
           p50 -> idx 1.0 = 2.5; p90 -> idx 1.8 = 2.5 + 0.8*0.5 = 2.9; p95 -> 2.95; p99 -> 2.99.
    TTFT = [1.0, 1.0, 3.0]: mean 5/3; p50 = 1.0; p90 = 1 + 0.8*2 = 2.6; p95 = 2.8; p99 = 2.96.
    TBT  = pooled gaps [0.5, 1.0] (r1) + [1.5] (r2), none from r3: mean 1.0; p50 = 1.0;
           p90 = 1.0 + 0.8*0.5 = 1.4; p95 = 1.45; p99 = 1.49.
    normalized latency = mean(2.5/3, 2.5/2, 3.0/1) = (10/12 + 15/12 + 36/12) / 3 = 61/36.
    duration = last finish 5.0 - first arrival 0.0 = 5.0; output tokens 3+2+1 = 6:
           1.2 tokens/s, 3/5 = 0.6 requests/s.
    totals (all records): preemptions 3, swapped bytes 150, swap time 0.1, stall time 0.2.
    service = prompt + generated for records that generated a token:
           a: (4+3) + (2+1) = 10; b: (5+2) + 0 (r4 rejected) = 7.
    Jain = (10+7)^2 / (2 * (10^2 + 7^2)) = 289/298.
    per-client mean JCT: a (2.5+3.0)/2 = 2.75; b 2.5. mean TTFT: a (1+3)/2 = 2; b 1.
    """
    s = metrics.summarize(_records())
    expected = {
        "num_requests": 4,
        "num_finished": 3,
        "num_rejected": 1,
        "num_unfinished": 0,
        "mean_jct": 8 / 3,
        "p50_jct": 2.5,
        "p90_jct": 2.9,
        "p95_jct": 2.95,
        "p99_jct": 2.99,
        "mean_ttft": 5 / 3,
        "p50_ttft": 1.0,
        "p90_ttft": 2.6,
        "p95_ttft": 2.8,
        "p99_ttft": 2.96,
        "mean_tbt": 1.0,
        "p50_tbt": 1.0,
        "p90_tbt": 1.4,
        "p95_tbt": 1.45,
        "p99_tbt": 1.49,
        "mean_normalized_latency": 61 / 36,
        "duration": 5.0,
        "output_tokens": 6,
        "throughput_tokens_per_s": 1.2,
        "throughput_requests_per_s": 0.6,
        "total_preemptions": 3,
        "total_swapped_bytes": 150,
        "total_swap_time": 0.1,
        "total_stall_time": 0.2,
        "jain_fairness": 289 / 298,
        "slo_attainment": None,
        "slo_ttft_attainment": None,
        "slo_tbt_attainment": None,
    }
    for key, value in expected.items():
        assert s[key] == pytest.approx(value), key
    assert s["clients"] == {
        "a": {
            "num_requests": 2,
            "num_finished": 2,
            "mean_jct": 2.75,
            "mean_ttft": 2.0,
            "p99_ttft": 2.98,  # TTFTs 1.0, 3.0: 1.0 + 0.99 * 2
            "service_tokens": 10,
            "service": 10.0,
            "weighted_service": 10.0,
            "weight": 1.0,
        },
        "b": {
            "num_requests": 2,
            "num_finished": 1,
            "mean_jct": 2.5,
            "mean_ttft": 1.0,
            "p99_ttft": 1.0,
            "service_tokens": 7,
            "service": 7.0,
            "weighted_service": 7.0,
            "weight": 1.0,
        },
    }
    json.dumps(s)  # a summary is plain JSON


def test_duration_override():
    s = metrics.summarize(_records(), duration=10.0)
    assert s["duration"] == 10.0
    assert s["throughput_tokens_per_s"] == pytest.approx(0.6)
    assert s["throughput_requests_per_s"] == pytest.approx(0.3)


def test_slo_attainment():
    """SLO TTFT <= 1.0 s and every TBT <= 1.0 s; denominator: all 4 records.

    r1: TTFT 1.0 (boundary counts), gaps 0.5, 1.0  -> meets both.
    r2: TTFT 1.0, gap 1.5                          -> TTFT only.
    r3: TTFT 3.0, no gaps (one token)              -> TBT only (vacuously).
    r4: rejected                                   -> neither.
    Both: 1/4; TTFT alone: 2/4; TBT alone: 2/4.
    """
    s = metrics.summarize(_records(), slo_ttft=1.0, slo_tbt=1.0)
    assert (s["slo_attainment"], s["slo_ttft_attainment"], s["slo_tbt_attainment"]) == (
        0.25,
        0.5,
        0.5,
    )
    assert (s["slo_ttft"], s["slo_tbt"]) == (1.0, 1.0)
    only_ttft = metrics.summarize(_records(), slo_ttft=3.0)
    assert only_ttft["slo_attainment"] == 0.75 and only_ttft["slo_tbt_attainment"] is None


def test_percentile_convention_is_numpy_linear():
    """Four values [1, 2, 3, 10]: the p-th percentile sits at index 3p/100.

    p50 -> 1.5 -> 2.5; p90 -> 2.7 -> 3 + 0.7*7 = 7.9; p95 -> 2.85 -> 8.95; p99 -> 2.97 -> 9.79.
    """
    records = [
        RequestRecord(f"r{i}", 0.0, 1, 1, j, j, [j]) for i, j in enumerate([10.0, 2.0, 1.0, 3.0])
    ]
    s = metrics.summarize(records)
    assert s["p50_jct"] == pytest.approx(2.5)
    assert s["p90_jct"] == pytest.approx(7.9)
    assert s["p95_jct"] == pytest.approx(8.95)
    assert s["p99_jct"] == pytest.approx(9.79)
    assert s["mean_jct"] == pytest.approx(4.0)
    x = [10.0, 2.0, 1.0, 3.0]
    assert s["p99_jct"] == pytest.approx(np.percentile(x, 99))


def test_empty_and_unfinished():
    s = metrics.summarize([])
    assert s["num_requests"] == 0 and s["mean_jct"] is None and s["jain_fairness"] is None
    running = RequestRecord("u", 0.0, 3, 2, 1.0, None, [1.0, 2.0], state="running")
    s = metrics.summarize([running], slo_ttft=5.0)
    assert s["num_unfinished"] == 1 and s["p99_ttft"] is None and s["slo_attainment"] == 0.0
    assert s["clients"]["default"]["service_tokens"] == 5
    with pytest.raises(ValueError, match="finish_time"):
        metrics.summarize([RequestRecord("x", 0.0, 1, 1, 1.0, None, [1.0])])


def test_jain_index():
    assert metrics.jain_index([5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert metrics.jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert metrics.jain_index([1.0, 3.0]) == pytest.approx(16 / 20)
    assert metrics.jain_index([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError):
        metrics.jain_index([])


def test_jain_with_client_weights():
    """Client a was served 10 tokens, b 7 (see test_summary_by_hand); weighting a by 10/7
    makes their normalized service equal."""
    s = metrics.summarize(_records(), client_weights={"a": 10 / 7})
    assert s["jain_fairness"] == pytest.approx(1.0)


def test_records_json_round_trip():
    records = _records()
    records[0].output_ids = [4, 5, 6]
    data = metrics.records_to_json(records)
    assert metrics.records_from_json(data) == records
    assert metrics.records_from_json(json.dumps(data)) == records
    with pytest.raises(ValueError, match="unknown"):
        metrics.records_from_json([data[0] | {"priority": 1}])
    with pytest.raises(ValueError, match="missing"):
        metrics.records_from_json([{"id": "x"}])


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    pytest.importorskip("matplotlib")
    from jaxserve import plots

    results = {"fcfs": _records(), "mlfq": _records()[:2]}
    out = plots.latency_cdfs(results, tmp_path / "figs" / "cdf.png")
    assert _is_png(out)
    sweep = {
        name: [(rate, metrics.summarize(recs)) for rate in (1.0, 2.0, 4.0)]
        for name, recs in results.items()
    }
    sweep["empty"] = [(1.0, metrics.summarize([]))]
    assert _is_png(plots.jct_vs_rate(sweep, tmp_path / "rate.png"))
    assert _is_png(plots.tail_vs_rate(sweep, tmp_path / "tail.png"))


def _gap_records() -> list[RequestRecord]:
    """Clients a and b, everything arriving at 0 (input and output cost 1 unless said).

    id  client prompt token_times   service received (time: amount)
    a1  a      2      [1, 2, 3]     1: 2 + 1, 2: 1, 3: 1
    a2  a      2      [4, 5]        4: 2 + 1, 5: 1
    b1  b      1      [6]           6: 1 + 1
    a waits for a first token over [0, 4), b over [0, 6): both backlogged in [0, 4).
    S_a - S_b at 0, 1, 2, 3 = 0, 3, 4, 5 (4 is outside): the gap is 5, over [0, 3].
    """
    return [
        RequestRecord("a1", 0.0, 2, 3, 1.0, 3.0, [1.0, 2.0, 3.0], client="a"),
        RequestRecord("a2", 0.0, 2, 2, 4.0, 5.0, [4.0, 5.0], client="a"),
        RequestRecord("b1", 0.0, 1, 1, 6.0, 6.0, [6.0], client="b"),
    ]


def test_service_gap_by_hand():
    gap = metrics.max_service_gap(_gap_records())
    assert gap == {"gap": 5.0, "clients": ["a", "b"], "interval": [0.0, 3.0]}
    # a of weight 2: its weighted service at 1, 2, 3 is 1.5, 2, 2.5
    assert metrics.max_service_gap(_gap_records(), {"a": 2.0})["gap"] == 2.5
    # output tokens at 2 each: S_a at 3 is 2 + 2 * 3 = 8
    assert metrics.max_service_gap(_gap_records(), output_cost=2.0)["gap"] == 8.0
    # b alone, or never backlogged together: no gap
    late = [RequestRecord("b1", 5.0, 1, 1, 6.0, 6.0, [6.0], client="b")]
    assert metrics.max_service_gap(_gap_records()[:2] + late)["gap"] == 0.0


def test_fairness_tail_and_stall_in_the_summary():
    """Input 1, output 2: a received 2 + 2 * 3 + 2 + 2 * 2 = 14, b 1 + 2 = 3; Jain's index
    of (14, 3) is 17^2 / (2 * (196 + 9)) = 289 / 410. JCTs are 3, 5, 6: the p99 JCT is
    5.98, so the p99 tail is b1 alone, whose stall is 1.5 s of 6 (25%)."""
    records = _gap_records()
    records[2].stall_time = 1.5
    records[0].stall_time = 0.3
    s = metrics.summarize(records, input_cost=1.0, output_cost=2.0)
    assert s["clients"]["a"]["service"] == 14.0 and s["clients"]["b"]["service"] == 3.0
    assert s["clients"]["a"]["service_tokens"] == 9  # plain tokens, not weighed
    assert s["jain_fairness"] == pytest.approx(289 / 410)
    assert s["max_service_gap"]["gap"] == 8.0
    assert s["mean_stall_time"] == pytest.approx(1.8 / 3)
    assert s["p99_stall_share"] == pytest.approx(0.25)
    assert s["p99.9_jct"] == pytest.approx(5.998)  # index 2 * 0.999 of [3, 5, 6]
    assert s["p99.9_ttft"] is not None and s["p95_tbt"] is not None
