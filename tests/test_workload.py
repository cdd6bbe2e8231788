"""Workloads: arrival processes, fitted length distributions, dataset readers, trace JSONL."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------- conversations


def test_conversation_prompts_grow():
    reqs = wl.conversation_workload(4, turns=3, rate=1.0, think_time=2.0, seed=0)
    assert len(reqs) == 12
    by_conv: dict[str, list[TraceRequest]] = {}
    for r in reqs:
        by_conv.setdefault(r.conversation, []).append(r)
    for turns in by_conv.values():
        assert [t.turn for t in turns] == [0, 1, 2]
        for prev, cur in zip(turns, turns[1:]):
            assert cur.arrival >= prev.arrival
            # the new prompt holds the previous prompt, its reply, and a new message (>= 1)
            assert cur.prompt_len > prev.prompt_len + prev.output_len
            finish = prev.arrival + 5.0
            gap = cur.arrival - prev.arrival
            assert wl.next_turn_release(prev, finish, cur) == pytest.approx(finish + gap)


def test_conversation_context_limit_and_turn_range():
    reqs = wl.conversation_workload(
        20, turns=(1, 6), rate=2.0, think_time=0.0, max_context_len=900, seed=3
    )
    assert all(r.prompt_len + r.output_len <= 900 for r in reqs)
    assert max(r.turn for r in reqs) <= 5
    with pytest.raises(WorkloadError, match="turns"):
        wl.conversation_workload(2, turns=0, rate=1.0, think_time=1.0)


def test_assign_clients_and_merge():
    reqs = wl.make_workload("alpaca_synth", 10.0, 4000, seed=0)
    mixed = wl.assign_clients(reqs, {"a": 3.0, "b": 1.0}, seed=0)
    share = sum(r.client == "a" for r in mixed) / len(mixed)
    assert share == pytest.approx(0.75, abs=0.03)
    a = wl.make_workload("alpaca_synth", 1.0, 3, client="a")
    b = wl.make_workload("sharegpt_synth", 1.0, 3, client="b")
    merged = wl.merge_workloads(a, b)
    assert len(merged) == 6 and [r.arrival for r in merged] == sorted(r.arrival for r in merged)
    with pytest.raises(WorkloadError, match="duplicate"):
        wl.merge_workloads(a, a)


# ----------------------------------------------------------------------------- dataset files

SHAREGPT = [
    {
        "id": "conv-a",
        "conversations": [
            {"from": "human", "value": "what is a cat"},
            {"from": "gpt", "value": "a small furry animal that purrs"},
            {"from": "human", "value": "and a dog"},
            {"from": "gpt", "value": "a loyal animal"},
        ],
    },
    {"id": "conv-empty", "conversations": []},
    {"id": "conv-only-human", "conversations": [{"from": "human", "value": "hello?"}]},
    {
        "id": "conv-b",
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "two plus two"},
            {"from": "gpt", "value": "four"},
        ],
    },
]
ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French:", "input": "good morning", "output": "bonjour"},
    {"instruction": "Say nothing.", "input": "", "output": ""},
]


def _write_json(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_read_sharegpt(tmp_path):
    path = _write_json(tmp_path, "sg.json", SHAREGPT)
    reqs = wl.read_sharegpt(path)
    assert [(r.id, r.prompt, r.prompt_len, r.output_len) for r in reqs] == [
        ("conv-a", "what is a cat", 4, 6),
        ("conv-b", "two plus two", 3, 1),
    ]
    assert all(r.arrival == 0.0 for r in reqs)
    chars = wl.read_sharegpt(path, tokenize=list, max_output_len=10)
    assert [(r.prompt_len, r.output_len) for r in chars] == [(13, 10), (12, 4)]
    assert [r.id for r in wl.read_sharegpt(path, max_prompt_len=3)] == ["conv-b"]


def test_read_sharegpt_with_arrivals(tmp_path):
    path = _write_json(tmp_path, "sg.json", SHAREGPT)
    reqs = wl.read_sharegpt(path, [0.5, 1.0, 2.0])
    assert [(r.id, r.arrival) for r in reqs] == [
        ("conv-a", 0.5),
        ("conv-b", 1.0),
        ("conv-a/1", 2.0),
    ]


def test_read_alpaca(tmp_path):
    path = _write_json(tmp_path, "al.json", ALPACA)
    reqs = wl.read_alpaca(path)
    assert [(r.id, r.prompt, r.prompt_len, r.output_len) for r in reqs] == [
        ("0", "Name a colour.", 3, 1),
        ("1", "Translate to French:\n\ngood morning", 5, 1),
    ]


def test_make_workload_from_datasets(tmp_path):
    sg = _write_json(tmp_path, "sg.json", SHAREGPT)
    al = _write_json(tmp_path, "al.json", ALPACA)
    reqs = wl.make_workload(sg, rate=2.0, num_requests=2, seed=0)
    assert sorted(r.id for r in reqs) == ["conv-a", "conv-b"]
    assert all(r.arrival > 0 for r in reqs)
    assert {r.prompt for r in wl.make_workload(al, 2.0, None)} == {
        "Name a colour.",
        "Translate to French:\n\ngood morning",
    }
    assert len(wl.make_workload(al, 2.0, 7, seed=1)) == 7  # more than the file: with replacement


@pytest.mark.parametrize(
    "content, reader, match",
    [
        ("{not json", wl.read_dataset, "not JSON"),
        ('{"a": 1}', wl.read_dataset, "wrong layout"),
        ('[{"foo": 1}]', wl.read_dataset, "wrong layout"),
        (json.dumps(ALPACA), wl.read_sharegpt, "wrong layout"),
        (json.dumps(SHAREGPT), wl.read_alpaca, "wrong layout"),
        (json.dumps(SHAREGPT[1:3]), wl.read_sharegpt, "no usable entries"),
        (json.dumps(ALPACA[2:]), wl.read_alpaca, "no usable entries"),
    ],
)
def test_dataset_errors_name_file(tmp_path, content, reader, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(WorkloadError, match=match) as e:
        reader(path)
    assert str(path) in str(e.value)


# ----------------------------------------------------------------------------- trace JSONL


def test_trace_round_trip_and_sorting(tmp_path):
    reqs = [
        TraceRequest("b", 2.5, 4, 7, prompt="a b c d", client="x"),
        TraceRequest("a", 0.25, 3, 1, prompt_ids=[5, 6, 7], conversation="c0", turn=1),
    ]
    path = tmp_path / "trace.jsonl"
    wl.write_trace(path, reqs)
    assert len(path.read_text().splitlines()) == 2
    assert wl.read_trace(path) == sorted(reqs, key=lambda r: r.arrival)


def test_trace_fills_prompt_len_and_ids(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"arrival": 1, "output_len": 2, "prompt": "one two three"}\n'
        "\n"
        '{"arrival": 0.5, "output_len": 3, "prompt_ids": [1, 2]}\n'
    )
    assert [(r.id, r.arrival, r.prompt_len) for r in wl.read_trace(path)] == [
        ("line3", 0.5, 2),
        ("line1", 1.0, 3),
    ]
    assert wl.read_trace(path, tokenize=list)[1].prompt_len == len("one two three")


@pytest.mark.parametrize(
    "bad, match",
    [
        ('{"arrival": 1, "output_len": 2, "prompt_len": 3, "urgency": 1}', "unknown field"),
        ('{"arrival": 1, "output_len": 2}', "one of"),
        ('{"output_len": 2, "prompt_len": 3}', "arrival"),
        ('{"arrival": 1, "prompt_len": 3}', "output_len"),
        ('{"arrival": -1, "output_len": 2, "prompt_len": 3}', "arrival"),
        ('{"arrival": "1", "output_len": 2, "prompt_len": 3}', "arrival"),
        ('{"arrival": 1, "output_len": 0, "prompt_len": 3}', "output_len"),
        ('{"arrival": 1, "output_len": 2, "prompt_len": 2.5}', "prompt_len"),
        ('{"arrival": 1, "output_len": 2, "prompt_len": 3, "prompt_ids": [1]}', "prompt_len"),
        ('{"arrival": 1, "output_len": 2, "prompt_len": 3, "turn": -1}', "turn"),
        ('{"id": "r0", "arrival": 1, "output_len": 2, "prompt_len": 3}', "duplicate id"),
        ("[1, 2]", "JSON object"),
        ("{oops", "not JSON"),
    ],
)
def test_trace_errors_report_line(tmp_path, bad, match):
    path = tmp_path / "t.jsonl"
    good = '{"id": "r0", "arrival": 0, "output_len": 1, "prompt_len": 1}'
    path.write_text(f"{good}\n\n{bad}\n")
    with pytest.raises(WorkloadError, match=match) as e:
        wl.read_trace(path)
    assert f"{path}:3:" in str(e.value)


_requests = st.builds(
    lambda i, arrival, prompt_len, output_len, prompt, with_ids, client, conv, turn: TraceRequest(
        id=f"{i}",
        arrival=arrival,
        prompt_len=prompt_len,
        output_len=output_len,
        prompt=prompt,
        prompt_ids=list(range(prompt_len)) if with_ids else None,
        client=client,
        conversation=conv,
        turn=turn,
    ),
    i=st.integers(0, 10**9),
    arrival=st.floats(0, 1e7, allow_nan=False, allow_infinity=False),
    prompt_len=st.integers(1, 50),
    output_len=st.integers(1, 10**6),
    prompt=st.none() | st.text(max_size=30),
    with_ids=st.booleans(),
    client=st.text(max_size=10),
    conv=st.none() | st.text(max_size=10),
    turn=st.integers(0, 100),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_requests, max_size=8, unique_by=lambda r: r.id))
def test_trace_round_trip_property(tmp_path_factory, reqs):
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    wl.write_trace(path, reqs)
    assert wl.read_trace(path) == sorted(reqs, key=lambda r: r.arrival)


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


# ----------------------------------------------------------------------------- multiturn_synth


def _multiturn(n=120, **params):
    return wl.make_workload(
        "multiturn_synth",
        2.0,
        n,
        seed=1,
        scale=0.25,
        max_prompt_len=256,
        max_output_len=256,
        length_params=params or None,
    )


def test_multiturn_clients_rates_weights_and_growing_prompts():
    """One heavy client with half the conversations and weight 2, three light clients and
    one on/off client of weight 1; turns of a conversation follow each other with prompts
    that hold the history; an on/off client starts conversations only in on periods."""
    reqs = _multiturn(n=400, on_s=5.0, off_s=5.0)
    assert len(reqs) == 400 and [r.arrival for r in reqs] == sorted(r.arrival for r in reqs)
    clients = {r.client for r in reqs}
    assert clients == {"heavy", "light0", "light1", "light2", "onoff0"}
    assert wl.client_weights(reqs) == {"heavy": 2.0, **{c: 1.0 for c in clients - {"heavy"}}}
    heavy = sum(r.client == "heavy" for r in reqs) / len(reqs)
    assert 0.35 < heavy < 0.65
    convs: dict[str, list[TraceRequest]] = {}
    for r in reqs:
        convs.setdefault(r.conversation, []).append(r)
        assert r.id == f"{r.conversation}-t{r.turn}" and r.conversation.startswith(r.client)
    assert max(len(c) for c in convs.values()) > 1
    for turns in convs.values():
        assert [t.turn for t in turns] == list(range(len(turns)))  # a prefix of turns
        for prev, cur in zip(turns, turns[1:]):
            assert cur.arrival >= prev.arrival
            assert cur.prompt_len > prev.prompt_len + prev.output_len
        assert turns[-1].prompt_len + turns[-1].output_len <= 512  # max_prompt + max_output
    for r in reqs:
        if r.client == "onoff0" and r.turn == 0:
            assert r.arrival % 10.0 < 5.0
    assert _multiturn() == _multiturn()  # seeded


@pytest.mark.parametrize(
    "params, match",
    [
        ({"heavy_share": 1.5}, "heavy_share must be a number in"),
        ({"on_off": 5}, "on_off=5 > light_clients=4"),
        ({"heavy_weight": 0}, "heavy_weight must be a number > 0"),
        ({"light_clients": -1}, "light_clients must be an integer >= 0"),
        ({"colour": 1}, r"unknown parameter\(s\) \['colour'\]"),
    ],
)
def test_multiturn_errors_name_the_parameter(params, match):
    with pytest.raises(WorkloadError, match=match):
        _multiturn(**params)


def test_multiturn_trace_round_trips_and_old_traces_still_read(tmp_path):
    reqs = _multiturn(n=60)
    path = tmp_path / "mt.jsonl"
    wl.write_trace(path, reqs)
    back = wl.read_trace(path)
    assert [(r.id, r.client, r.conversation, r.turn, r.weight) for r in back] == [
        (r.id, r.client, r.conversation, r.turn, r.weight) for r in reqs
    ]
    assert back == reqs
    old = tmp_path / "old.jsonl"  # a trace written before clients, turns and weights
    old.write_text('{"id": "a", "arrival": 0.5, "prompt_len": 3, "output_len": 2}\n')
    (r,) = wl.read_trace(old)
    assert (r.client, r.conversation, r.turn, r.weight) == ("default", None, 0, None)
    assert wl.client_weights([r]) == {}


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"arrival": 0, "prompt_len": 1, "output_len": 1, "weight": 0}'], "weight must be"),
        (['{"arrival": 0, "prompt_len": 1, "output_len": 1, "weight": "2"}'], "weight must be"),
        (
            [
                '{"id": "a", "arrival": 0, "prompt_len": 1, "output_len": 1, "client": "c",'
                ' "weight": 1}',
                '{"id": "b", "arrival": 0, "prompt_len": 1, "output_len": 1, "client": "c",'
                ' "weight": 2}',
            ],
            r"t.jsonl:2: client 'c' has weight 2.0, but 1.0 on line 1",
        ),
    ],
)
def test_trace_weight_errors_name_the_line(tmp_path, lines, match):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkloadError, match=match):
        wl.read_trace(path)
