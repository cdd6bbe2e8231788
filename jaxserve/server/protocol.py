"""Request validation for the OpenAI-style endpoints: JSON body -> `GenRequest`, or `ApiError`.

    body (any JSON value) -> parse_completion / parse_chat -> GenRequest (token ids,
    SamplingParams, stream options, client, priority)     | ApiError(status, message, param)

Everything a client sends is checked here, before the engine sees it, so a bad request gets a
4xx naming the field and never reaches the engine thread. Limits come from the model and the
KV pool (`Limits`). Pure Python; no jax, no web framework.

Fields beyond OpenAI's (all optional):
  user              the client, for fair schedulers and per-client metrics (OpenAI's field)
  priority          int (default 0), lower runs earlier: the `priority` scheduler ranks every
                    request by it (preempting); the others only take requests that reach the
                    engine together (between two of its steps) in priority order
  top_k             int >= 0 (0 or -1: off)
  ignore_eos        bool, do not stop at the tokenizer's end-of-sequence token
  trace_output_len  int, trace replay: the request's true output length; oracle schedulers
                    (srpt) read it and the request ends ("stop") after that many tokens
  conversation      string, the request is a turn of this conversation (ids are the
                    client's to choose, unique across the server: e.g. a UUID). A chat turn
                    that extends the conversation's previous turn continues from that turn's
                    own token ids (`chat.py`); with multi-turn reuse on, the engine starts it
                    from the previous turn's kept KV (usage.prompt_tokens_details.cached_tokens
                    counts the tokens it did not prefill)
  return_details    bool, add the engine's record (token ids, token times on the server's
                    monotonic clock, preemptions, swapped bytes) to the response
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from jaxserve.sampling import SamplingParams
from jaxserve.server.chat import PLAIN_TEMPLATE_DOC, jinja_template, plain_template

__all__ = [
    "PLAIN_TEMPLATE_DOC",
    "ApiError",
    "GenRequest",
    "Limits",
    "jinja_template",
    "parse_chat",
    "parse_completion",
    "plain_template",
]

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = 4  # stop sequences per request, as OpenAI allows
MAX_USER_LEN = 256
MAX_SEED = 2**63 - 1


class ApiError(Exception):
    """A request the server refuses; rendered as an OpenAI-style JSON error."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = (
            status,
            message,
            param,
            type,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclasses.dataclass(frozen=True)
class Limits:
    model: str  # the served model's name (the `model` field must match it)
    vocab_size: int  # token ids must lie in [0, vocab_size)
    max_model_len: int  # prompt + generated tokens one request may hold (model and KV pool)
    max_tokens: int  # the most tokens one request may ask for
    eos_id: int | None = None  # stop token unless `ignore_eos`


@dataclasses.dataclass
class GenRequest:
    """A validated request, ready for the engine thread."""

    prompt_ids: list[int]  # the prompt as token ids (chat: the rendered template)
    params: SamplingParams  # max_new_tokens, temperature, top_k, top_p, stop ids, seed
    stop: tuple[str, ...] = ()  # stop strings (the text ends before the first one)
    stream: bool = False  # server-sent events
    include_usage: bool = False  # a final usage chunk in a stream
    user: str = "default"  # the client, for fair schedulers
    priority: int = 0  # lower first (the `priority` scheduler; others: arrival ties)
    trace_output_len: int | None = None  # oracle length and emulated EOS (trace replay)
    return_details: bool = False  # add the engine's record of the request
    chat: bool = False  # /v1/chat/completions
    conversation: str | None = None  # the conversation this request is a turn of
    prompt_text: str | None = None  # chat: the rendered messages (recorded for the next turn)


Tokenize = Callable[[str], list[int]]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param)


def _get(body: dict, name: str, check: Callable[[Any], bool], want: str, default: Any) -> Any:
    """body[name] if present and not null, checked; `default` otherwise."""
    v = body.get(name)
    if v is None:
        return default
    if not check(v):
        raise _bad(name, f"expected {want}, got {_describe(v)}")
    return v


def _describe(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_model(body: dict, limits: Limits) -> None:
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise _bad("model", f"expected a string, got {_describe(model)}")
    if model != limits.model:
        raise ApiError(
            404,
            f"model: {model!r} does not exist; this server serves {limits.model!r}",
            "model",
            code="model_not_found",
        )


def _token_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(t) for t in v)


def _prompt_ids(prompt: Any, tokenize: Tokenize | None, limits: Limits) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise _bad("prompt", "is empty")
        if tokenize is None:
            raise _bad("prompt", "this model has no tokenizer: send token ids")
        ids = tokenize(prompt)
        if not ids:
            raise _bad("prompt", "tokenizes to no tokens")
    elif _token_list(prompt):
        if not prompt:
            raise _bad("prompt", "is empty")
        ids = list(prompt)
    elif (
        isinstance(prompt, list)
        and len(prompt) > 1
        and all(isinstance(p, str) or _token_list(p) for p in prompt)
    ):
        raise _bad("prompt", f"batches of {len(prompt)} prompts are not supported: send one")
    else:
        raise _bad("prompt", f"expected a string or a list of token ids, got {_describe(prompt)}")
    bad = [t for t in ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise _bad("prompt", f"token ids {bad[:5]} outside the vocabulary [0, {limits.vocab_size})")
    return ids


def _common(
    body: dict, ids: list[int], limits: Limits, default_max: int, max_name: str
) -> GenRequest:
    """Sampling, stream and extension fields shared by both endpoints."""
    room = limits.max_model_len - len(ids)
    if room < 1:
        raise _bad(
            "prompt" if max_name == "max_tokens" else "messages",
            f"{len(ids)} prompt tokens leave no room to generate: the context holds "
            f"{limits.max_model_len} tokens",
        )
    max_tokens = _get(body, max_name, _is_int, "an integer", None)
    if max_tokens is None:
        max_tokens = max(1, min(default_max, room, limits.max_tokens))
    elif max_tokens < 1:
        raise _bad(max_name, f"must be >= 1, got {max_tokens}")
    elif max_tokens > limits.max_tokens:
        raise _bad(
            max_name, f"{max_tokens} is more than this server's limit of {limits.max_tokens}"
        )
    elif max_tokens > room:
        raise _bad(
            max_name,
            f"{len(ids)} prompt tokens + {max_tokens} new tokens exceed "
            f"the context of {limits.max_model_len} tokens",
        )
    temperature = float(_get(body, "temperature", _is_number, "a number", 1.0))
    if not 0 <= temperature <= 2:
        raise _bad("temperature", f"must be in [0, 2], got {temperature}")
    top_p = float(_get(body, "top_p", _is_number, "a number", 1.0))
    if not 0 < top_p <= 1:
        raise _bad("top_p", f"must be in (0, 1], got {top_p}")
    top_k = _get(body, "top_k", _is_int, "an integer", 0)
    if top_k == -1:
        top_k = 0
    if not 0 <= top_k <= limits.vocab_size:
        raise _bad("top_k", f"must be -1, 0 (off) or in [1, {limits.vocab_size}], got {top_k}")
    seed = _get(body, "seed", _is_int, "an integer", 0)
    if not 0 <= seed <= MAX_SEED:
        raise _bad("seed", f"must be in [0, 2**63), got {seed}")
    n = _get(body, "n", _is_int, "an integer", 1)
    if n != 1:
        raise _bad("n", f"only n=1 is supported, got {n}")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise _bad("stop", f"expected a string or a list of strings, got {_describe(stop)}")
    if len(stop) > MAX_STOP:
        raise _bad("stop", f"at most {MAX_STOP} stop sequences, got {len(stop)}")
    stream = _get(body, "stream", lambda v: isinstance(v, bool), "a boolean", False)
    options = _get(body, "stream_options", lambda v: isinstance(v, dict), "an object", {})
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _bad(
            "stream_options", f"include_usage: expected a boolean, got {_describe(include_usage)}"
        )
    if options and not stream:
        raise _bad("stream_options", "only allowed with stream: true")
    user = _get(body, "user", lambda v: isinstance(v, str), "a string", "") or "default"
    if len(user) > MAX_USER_LEN:
        raise _bad("user", f"at most {MAX_USER_LEN} characters, got {len(user)}")
    priority = _get(body, "priority", _is_int, "an integer", 0)
    conversation = _conversation(body)
    ignore_eos = _get(body, "ignore_eos", lambda v: isinstance(v, bool), "a boolean", False)
    trace_len = _get(body, "trace_output_len", _is_int, "an integer", None)
    if trace_len is not None and not 1 <= trace_len <= max_tokens:
        raise _bad("trace_output_len", f"must be in [1, {max_name}={max_tokens}], got {trace_len}")
    details = _get(body, "return_details", lambda v: isinstance(v, bool), "a boolean", False)
    _unsupported(body)
    stop_ids = () if ignore_eos or limits.eos_id is None else (limits.eos_id,)
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_token_ids=stop_ids,
        stop_strings=tuple(stop),
        seed=seed,
    )
    return GenRequest(
        prompt_ids=ids,
        params=params,
        stop=tuple(s for s in stop if s),
        stream=stream,
        include_usage=include_usage,
        user=user,
        priority=priority,
        trace_output_len=trace_len,
        return_details=details,
        conversation=conversation,
    )


def _conversation(body: dict) -> str | None:
    conv = _get(body, "conversation", lambda v: isinstance(v, str), "a string", None)
    if conv is not None and not 1 <= len(conv) <= MAX_USER_LEN:
        raise _bad("conversation", f"must have 1 to {MAX_USER_LEN} characters, got {len(conv)}")
    return conv


def _unsupported(body: dict) -> None:
    """Fields whose non-default values this server cannot honour: refused, not ignored."""
    for name, ok in (
        ("logprobs", lambda v: v is None or v is False or v == 0),
        ("top_logprobs", lambda v: v is None or v == 0),
        ("echo", lambda v: v is None or v is False),
        ("best_of", lambda v: v is None or v == 1),
        ("suffix", lambda v: v is None),
        ("logit_bias", lambda v: v is None or v == {}),
        ("presence_penalty", lambda v: v is None or v == 0),
        ("frequency_penalty", lambda v: v is None or v == 0),
        ("tools", lambda v: v is None or v == []),
    ):
        if name in body and not ok(body[name]):
            raise _bad(name, f"not supported by this server (got {_describe(body[name])})")


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_describe(body)}")
    return body


def parse_completion(body: Any, limits: Limits, tokenize: Tokenize | None) -> GenRequest:
    """/v1/completions. `prompt`: a string, token ids, or a batch of one of either."""
    body = _object(body)
    _check_model(body, limits)
    if "prompt" not in body or body["prompt"] is None:
        raise _bad("prompt", "is required")
    ids = _prompt_ids(body["prompt"], tokenize, limits)
    return _common(body, ids, limits, default_max=16, max_name="max_tokens")


def _message_text(i: int, m: Any) -> tuple[str, str]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise ApiError(400, f"{where}: expected an object, got {_describe(m)}", "messages")
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        raise ApiError(
            400, f"{where}.role: expected one of {ROLES}, got {_describe(role)}", "messages"
        )
    if isinstance(content, list):  # content parts: only text is served
        parts = []
        for part in content:
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise ApiError(
                    400,
                    f"{where}.content: only text parts are supported, got {_describe(part)}",
                    "messages",
                )
            parts.append(part["text"])
        content = "".join(parts)
    if content is None and role == "assistant":
        content = ""
    if not isinstance(content, str):
        raise ApiError(
            400, f"{where}.content: expected a string, got {_describe(content)}", "messages"
        )
    return role, content


def parse_chat(
    body: Any,
    limits: Limits,
    tokenize: Tokenize | None,
    render: Callable[[list[dict[str, str]]], str],
    continuation: Callable[[str, str], list[int] | None] | None = None,
) -> GenRequest:
    """/v1/chat/completions. `messages` go through `render` (the chat template), then
    `continuation(conversation, text)` (the ids continuing that conversation's last turn, or
    None) for a turn of a conversation, else `tokenize`."""
    body = _object(body)
    _check_model(body, limits)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", f"expected a non-empty list of messages, got {_describe(messages)}")
    msgs = [dict(zip(("role", "content"), _message_text(i, m))) for i, m in enumerate(messages)]
    if tokenize is None:
        raise _bad("messages", "this model has no tokenizer: use /v1/completions with token ids")
    try:
        text = render(msgs)
    except Exception as e:  # a template may raise on what it does not accept
        raise _bad("messages", f"the chat template refused them: {e}") from None
    conv = _conversation(body)
    ids = continuation(conv, text) if conv is not None and continuation is not None else None
    if ids is None:
        ids = tokenize(text)
    if not ids:
        raise _bad("messages", "render to no tokens")
    bad = [t for t in ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise _bad("messages", f"token ids {bad[:5]} outside the model's vocabulary")
    name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else ("max_tokens")
    )
    gen = _common(body, ids, limits, default_max=limits.max_tokens, max_name=name)
    gen.chat, gen.prompt_text = True, text
    return gen
