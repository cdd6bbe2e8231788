"""Concurrent streams over HTTP, and a client that disconnects cancels its request."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest
from server_helpers import MODEL, TIMEOUT, _first_chunks, _SlowSteps, reference


def test_concurrent_streams_each_get_their_own_tokens(server, parts):
    tok = parts[2]
    prompts = [f"Request number {i} says" for i in range(8)]
    want = {
        p: reference(parts, tok.encode(p), 8 + i, ignore_eos=True) for i, p in enumerate(prompts)
    }

    def run(i, p):
        s = server.openai.completions.create(
            model=MODEL,
            prompt=p,
            max_tokens=8 + i,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return "".join(c.choices[0].text for c in s)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(run, range(8), prompts))
    assert got == [tok.decode(want[p]) for p in prompts]
    assert server.engine.iterations > 0
    server.assert_no_leak()


@pytest.mark.parametrize("chat", [False, True])
def test_disconnect_cancels_and_frees_pages(server, chat):
    before = server.metric("jaxserve_requests_total", '{outcome="cancelled"}')
    body = {"model": MODEL, "max_tokens": 48, "stream": True, "ignore_eos": True}
    if chat:
        body["messages"] = [{"role": "user", "content": "Tell me a very long story"}]
        url = server.url + "/v1/chat/completions"
    else:
        body["prompt"] = "Tell me a very long story"
        url = server.url + "/v1/completions"
    rid = _first_chunks(url, body, 2)
    assert server.idle()
    tl = server.record(rid)
    assert tl.finish_reason == "cancelled" and 2 <= len(tl.output_ids) < 48
    server.assert_no_leak()
    assert server.metric("jaxserve_requests_total", '{outcome="cancelled"}') == before + 1


@pytest.mark.parametrize("delay, timeout", [(0.02, 0.4), (1.0, 0.3)], ids=["running", "queued"])
def test_disconnect_of_a_non_streaming_request_cancels_it(server, delay, timeout):
    """The client gives up after `timeout` s: while its request runs (48 steps of > 20 ms), or
    before its first token (the first step takes > 1 s)."""
    body = {
        "model": MODEL,
        "prompt": "Tell me a very long story",
        "max_tokens": 48,
        "ignore_eos": True,
    }
    httpx.post(server.url + "/v1/completions", json={**body, "max_tokens": 3}, timeout=TIMEOUT)
    assert server.idle()
    n = len(server.records)  # (that compiled what this request runs)
    with _SlowSteps(server.engine, delay):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server.url + "/v1/completions", json=body, timeout=timeout)
        assert server.idle()
    (rid,) = list(server.records)[n:]
    tl = server.record(rid)
    assert tl.finish_reason == "cancelled"
    assert (len(tl.output_ids) > 1) if delay < 1 else (len(tl.output_ids) <= 1)
    server.assert_no_leak()
