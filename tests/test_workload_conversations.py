"""Conversations: growing prompts, clients and weights, the multiturn_synth workload."""

from __future__ import annotations

import pytest

from jaxserve import workload as wl
from jaxserve.workload import TraceRequest, WorkloadError

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
