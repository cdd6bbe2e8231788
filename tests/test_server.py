"""The HTTP endpoints, streamed or not, give exactly the tokens of the in-process engine."""

from __future__ import annotations

from server_helpers import EOS, MODEL, reference


def _details(obj) -> dict:
    return obj.model_extra["details"]


def test_completion_and_stream_match_the_in_process_engine(server, parts):
    tok = parts[2]
    ids = tok.encode("The quick brown fox")
    want = reference(parts, ids, 12)
    r = server.openai.completions.create(
        model=MODEL,
        prompt="The quick brown fox",
        max_tokens=12,
        temperature=0,
        extra_body={"return_details": True},
    )
    assert _details(r)["token_ids"] == want
    assert r.choices[0].text == tok.decode(want)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(want)
    assert r.choices[0].finish_reason == ("stop" if want[-1] == EOS else "length")
    # the same request as token ids, streamed: one chunk per token, same text
    chunks = list(
        server.openai.completions.create(
            model=MODEL,
            prompt=ids,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == len(want) and not chunks[-1].choices
    text_chunks = chunks[:-1]
    assert len(text_chunks) == len(want)
    assert "".join(c.choices[0].text for c in text_chunks) == tok.decode(want)
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == r.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])


def test_chat_streamed_and_not(server, parts):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}]
    ids = parts[2].encode("System: You are terse.\nUser: Hi!\nAssistant:")
    want = reference(parts, ids, 10, ignore_eos=True)
    r = server.openai.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True, "return_details": True},
    )
    assert _details(r)["token_ids"] == want and r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == parts[2].decode(want)
    assert r.choices[0].finish_reason == "length"
    stream = server.openai.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_completion_tokens=10,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_ends_the_text_before_it(server, parts):
    tok = parts[2]
    ids = tok.encode("Once upon a time")
    full = tok.decode(reference(parts, ids, 16, ignore_eos=True))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3 and stop.strip()
    before = full[: full.index(stop)]
    for stream in (False, True):
        r = server.openai.completions.create(
            model=MODEL,
            prompt=ids,
            max_tokens=16,
            temperature=0,
            stop=[stop],
            stream=stream,
            extra_body={"ignore_eos": True},
        )
        if stream:
            chunks = list(r)
            text = "".join(c.choices[0].text for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        assert text == before and reason == "stop"
