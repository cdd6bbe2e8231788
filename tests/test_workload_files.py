"""Workload files: ShareGPT and Alpaca dataset readers, trace JSONL and its errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxserve import workload as wl
from jaxserve.workload import TraceRequest, WorkloadError

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
