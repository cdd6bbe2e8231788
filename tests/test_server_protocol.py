"""Request validation (no server): every bad field is a 4xx naming it; good bodies parse."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxserve.server import protocol
from jaxserve.server.app import TextStream
from jaxserve.server.protocol import ApiError, Limits
from jaxserve.tokenizer import load_default

LIMITS = Limits(model="m", vocab_size=100, max_model_len=64, max_tokens=32, eos_id=2)


def _tokenize(text: str) -> list[int]:
    """One token per character, ids 10 + ord % 80 (hand-computable)."""
    return [10 + ord(c) % 80 for c in text]


def _parse(body, chat=False):
    if chat:
        return protocol.parse_chat(body, LIMITS, _tokenize, protocol.plain_template)
    return protocol.parse_completion(body, LIMITS, _tokenize)


def test_completion_fields_parse():
    g = _parse(
        {
            "model": "m",
            "prompt": "abc",
            "max_tokens": 5,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 7,
            "seed": 3,
            "stop": "x",
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "alice",
            "priority": -2,
            "conversation": "c-1",
        }
    )
    assert g.prompt_ids == _tokenize("abc")
    p = g.params
    assert (p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.seed) == (5, 0.5, 0.9, 7, 3)
    assert p.stop_token_ids == (2,) and p.stop_strings == ("x",) and g.stop == ("x",)
    assert g.stream and g.include_usage and g.user == "alice" and g.priority == -2
    assert g.conversation == "c-1" and _parse({"prompt": "a"}).conversation is None
    # token ids, a batch of one, defaults (OpenAI's 16 tokens, temperature 1), ignore_eos
    g = _parse({"prompt": [[5, 6, 7]], "ignore_eos": True})
    assert g.prompt_ids == [5, 6, 7] and g.params.max_new_tokens == 16
    assert g.params.temperature == 1.0 and g.params.stop_token_ids == () and g.user == "default"
    # the default max_tokens never passes the context: 60 prompt tokens leave 4
    assert _parse({"prompt": [5] * 60}).params.max_new_tokens == 4


def test_chat_renders_the_plain_template():
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    g = _parse({"messages": msgs, "max_completion_tokens": 3}, chat=True)
    assert g.prompt_ids == _tokenize("System: be brief\nUser: hi\nAssistant:")
    assert g.chat and g.params.max_new_tokens == 3
    # without max_tokens a chat may use the whole room, up to the server's limit
    assert _parse({"messages": msgs[1:]}, chat=True).params.max_new_tokens == 32


def test_jinja_chat_template():
    render = protocol.jinja_template(
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}",
        bos_token="<s>",
    )
    assert render([{"role": "user", "content": "hi"}]) == "<s><user>hi<assistant>"
    strict = protocol.jinja_template("{{ raise_exception('no system role') }}")
    with pytest.raises(ApiError) as e:
        protocol.parse_chat(
            {"messages": [{"role": "user", "content": "x"}]}, LIMITS, _tokenize, strict
        )
    assert e.value.param == "messages" and "no system role" in e.value.message


BAD = [
    ([1, 2], None, 400),  # not an object
    ({"prompt": "a", "model": "other"}, "model", 404),
    ({"prompt": "a", "model": 3}, "model", 400),
    ({}, "prompt", 400),
    ({"prompt": ""}, "prompt", 400),
    ({"prompt": []}, "prompt", 400),
    ({"prompt": 5}, "prompt", 400),
    ({"prompt": [1, 2.5]}, "prompt", 400),
    ({"prompt": [1, True]}, "prompt", 400),
    ({"prompt": ["a", "b"]}, "prompt", 400),  # batches
    ({"prompt": [1, 100]}, "prompt", 400),  # outside the vocabulary
    ({"prompt": [-1]}, "prompt", 400),
    ({"prompt": [5] * 64}, "prompt", 400),  # no room left in the context
    ({"prompt": "a", "max_tokens": 0}, "max_tokens", 400),
    ({"prompt": "a", "max_tokens": -3}, "max_tokens", 400),
    ({"prompt": "a", "max_tokens": 33}, "max_tokens", 400),  # over the server's limit
    ({"prompt": [5] * 40, "max_tokens": 30}, "max_tokens", 400),  # over the context
    ({"prompt": "a", "max_tokens": "5"}, "max_tokens", 400),
    ({"prompt": "a", "max_tokens": 5.0}, "max_tokens", 400),
    ({"prompt": "a", "temperature": -0.1}, "temperature", 400),
    ({"prompt": "a", "temperature": 2.5}, "temperature", 400),
    ({"prompt": "a", "temperature": "hot"}, "temperature", 400),
    ({"prompt": "a", "top_p": 0}, "top_p", 400),
    ({"prompt": "a", "top_p": 1.5}, "top_p", 400),
    ({"prompt": "a", "top_k": -2}, "top_k", 400),
    ({"prompt": "a", "top_k": 101}, "top_k", 400),
    ({"prompt": "a", "top_k": 1.5}, "top_k", 400),
    ({"prompt": "a", "n": 2}, "n", 400),
    ({"prompt": "a", "seed": -1}, "seed", 400),
    ({"prompt": "a", "stop": 3}, "stop", 400),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop", 400),
    ({"prompt": "a", "stream": "yes"}, "stream", 400),
    ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options", 400),
    ({"prompt": "a", "user": 7}, "user", 400),
    ({"prompt": "a", "priority": "high"}, "priority", 400),
    ({"prompt": "a", "conversation": 7}, "conversation", 400),
    ({"prompt": "a", "conversation": ""}, "conversation", 400),
    ({"prompt": "a", "conversation": "c" * 257}, "conversation", 400),
    ({"prompt": "a", "logprobs": 3}, "logprobs", 400),
    ({"prompt": "a", "echo": True}, "echo", 400),
    ({"prompt": "a", "max_tokens": 4, "trace_output_len": 5}, "trace_output_len", 400),
]


@pytest.mark.parametrize("body, param, status", BAD)
def test_bad_completion_fields_name_the_field(body, param, status):
    with pytest.raises(ApiError) as e:
        _parse(body)
    assert e.value.status == status and e.value.param == param
    err = e.value.body()["error"]
    assert err["param"] == param and err["message"] and err["type"]
    if param:
        assert err["message"].startswith(param)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]},
        {"messages": [{"role": "user"}]},
        {"messages": ["hi"]},
    ],
)
def test_bad_messages(body):
    with pytest.raises(ApiError) as e:
        _parse(body, chat=True)
    assert e.value.status == 400 and e.value.param == "messages"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "n",
    "stop",
    "stream",
    "stream_options",
    "user",
    "priority",
    "logprobs",
    "echo",
    "ignore_eos",
    "trace_output_len",
    "return_details",
]
BODIES = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8) | JSON


@settings(max_examples=300, deadline=None)
@given(BODIES, st.booleans())
def test_fuzz_only_api_errors(body, chat):
    """Whatever JSON arrives, parsing either succeeds within the limits or raises an ApiError
    with a 4xx status; and the error body is JSON."""
    try:
        g = _parse(body, chat)
    except ApiError as e:
        assert 400 <= e.status < 500
        json.dumps(e.body())
        return
    assert 1 <= g.params.max_new_tokens <= LIMITS.max_tokens
    assert len(g.prompt_ids) + g.params.max_new_tokens <= LIMITS.max_model_len
    assert all(0 <= t < LIMITS.vocab_size for t in g.prompt_ids)


def test_text_stream_holds_back_stop_prefixes_and_partial_characters():
    tok = load_default()
    ids = tok.encode("héllo wörld, done")
    # streamed deltas add up to the decoded text, however the ids split characters
    for text in ("héllo wörld, done", "日本語のテキスト"):
        ids = tok.encode(text)
        pieces = [tok.decode([t]) for t in ids]
        ts = TextStream(tok)
        deltas = [ts.add(t) for t in ids] + [ts.flush()]
        assert "".join(deltas) == text
        assert not any("\ufffd" in d for d in deltas)
    assert any("\ufffd" in p for p in pieces)  # the ids do split characters
    # a stop string ends the text before it; text that may begin one waits for the next token
    ids = tok.encode("héllo wörld, done")
    ts = TextStream(tok, ("ld,",))
    deltas = [ts.add(t) for t in ids] + [ts.flush()]
    assert "".join(deltas) == "héllo wör" and ts.text == "héllo wör"
    (ab,) = tok.encode("ab")
    ts = TextStream(tok, ("xyz", "bcd"))
    assert ts.add(ab) == "a" and ts.flush() == "b"  # "b" could begin "bcd": held to the end
    ts = TextStream(tok, ("xyz",))
    assert ts.add(ab) == "ab"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4095), max_size=24))
def test_text_stream_deltas_add_up_to_the_full_decode(ids):
    """Decoding a window per token hands out exactly what decoding everything at once gives."""
    tok = load_default()
    ts = TextStream(tok)
    deltas = [ts.add(t) for t in ids] + [ts.flush()]
    assert "".join(deltas) == tok.decode(ids)
