"""Bad requests are 4xx errors naming the field (also fuzzed); overload is a 429."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import MODEL, TIMEOUT, Server

BAD = [
    (b"{not json", None),
    (b"\xff\xfe", None),
    (b'"a string"', None),
    (json.dumps({"prompt": ""}).encode(), "prompt"),
    (json.dumps({"model": MODEL}).encode(), "prompt"),
    (json.dumps({"prompt": [1, 99999]}).encode(), "prompt"),
    (json.dumps({"prompt": [5] * 300}).encode(), "prompt"),
    (json.dumps({"prompt": "hi", "max_tokens": 0}).encode(), "max_tokens"),
    (json.dumps({"prompt": "hi", "max_tokens": 49}).encode(), "max_tokens"),
    (json.dumps({"prompt": "hi", "temperature": 3}).encode(), "temperature"),
    (json.dumps({"prompt": "hi", "top_p": 0}).encode(), "top_p"),
    (json.dumps({"prompt": "hi", "top_k": -5}).encode(), "top_k"),
    (json.dumps({"prompt": "hi", "model": "gpt-4"}).encode(), "model"),
    (b"[" * 100_000 + b"]" * 100_000, None),
]


@pytest.mark.parametrize("raw, param", BAD)
def test_bad_input_is_a_4xx_naming_the_field(server, raw, param):
    r = httpx.post(
        server.url + "/v1/completions",
        content=raw,
        timeout=TIMEOUT,
        headers={"content-type": "application/json"},
    )
    assert 400 <= r.status_code < 500
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    assert r.status_code == (404 if param == "model" else 400)


def test_oversized_body_is_413(server):
    r = httpx.post(
        server.url + "/v1/completions",
        timeout=TIMEOUT,
        content=b'{"prompt": "' + b"x" * (17 << 20) + b'"}',
    )
    assert r.status_code == 413 and r.json()["error"]["message"]


def test_openai_client_sees_typed_errors_and_the_server_keeps_serving(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.openai.completions.create(model=MODEL, prompt="hi", max_tokens=-1)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        server.openai.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert httpx.get(server.url + "/v1/nothing", timeout=TIMEOUT).json()["error"]["message"]
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).json()["status"] == "ok"
    assert server.openai.models.list().data[0].id == MODEL
    r = server.openai.completions.create(model=MODEL, prompt="still here", max_tokens=3)
    assert r.usage.completion_tokens >= 1


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)  # what JSON can carry
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stream",
    "stream_options",
    "user",
    "n",
    "seed",
    "priority",
]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6), st.booleans())
def test_fuzz_malformed_requests(server, body, chat):
    """Random bodies: 200 or a 4xx with an OpenAI-style error, never a 5xx or a hang."""
    if "max_tokens" not in body:
        body["max_tokens"] = 2  # keep accepted requests short
    url = server.url + ("/v1/chat/completions" if chat else "/v1/completions")
    r = httpx.post(url, json=body, timeout=TIMEOUT)
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.json()["error"]["message"]


def test_overload_answers_429(parts):
    s = Server(parts, max_inflight=1)
    try:
        body = {
            "model": MODEL,
            "prompt": "hold the only slot",
            "max_tokens": 48,
            "ignore_eos": True,
            "stream": True,
        }
        with (
            httpx.Client(timeout=TIMEOUT) as c,
            c.stream("POST", s.url + "/v1/completions", json=body) as held,
        ):
            assert held.status_code == 200
            with pytest.raises(openai.RateLimitError) as e:
                s.openai.completions.create(model=MODEL, prompt="me too", max_tokens=2)
            assert e.value.status_code == 429
            assert s.metric("jaxserve_http_errors_total", '{status="429"}') == 1
            n = sum(1 for line in held.iter_lines() if line.startswith("data: {"))
            assert n == 48
        assert s.idle()
        r = s.openai.completions.create(model=MODEL, prompt="me too", max_tokens=2)
        assert r.usage.completion_tokens >= 1
    finally:
        s.stop()
