"""The OpenAI-style bodies of a generation: the JSON response, the server-sent-event chunks
of a stream (one per token, then usage and [DONE]), usage and per-request details.

`Bodies` is a part of `jaxserve.server.app.Api` (its state: `limits`, `tokenizer`, `loop`,
`_prefixes`, and `_remember` for chat turns).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from jaxserve.engine import Event
from jaxserve.server.engine_loop import Handle
from jaxserve.server.text import TextStream

TERMINAL = ("finish", "reject")
STOPS = ("stop", "length")  # finish reasons of a completed request


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class Bodies:
    def _finish_reason(self, detail: str | None) -> str:
        return detail if detail in STOPS else "abort"

    def _usage(self, handle: Handle, n: int) -> dict[str, int]:
        p = len(handle.request.prompt_ids)
        usage: dict[str, Any] = {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}
        if handle.request.conversation is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": handle.cached_tokens}
        return usage

    def _details(self, terminal: Event) -> dict[str, Any]:
        """The request's record, from its terminal event (the engine has released it)."""
        tl = terminal.record or self.loop.engine.timelines[terminal.request_id]
        off = self.loop.clock_offset
        return {
            "clock": "perf_counter",
            "arrival": tl.arrival + off,
            "token_times": [t + off for t in tl.token_times],
            "token_ids": list(tl.output_ids),
            "preemptions": tl.preemptions,
            "swapped_bytes": tl.swapped_bytes,
            "swap_time": tl.swap_time,
            "stall_time": tl.stall_time,
        }

    def _head(self, handle: Handle, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion" if handle.request.chat else "text_completion") + (
            ".chunk" if chunk and handle.request.chat else ""
        )
        return {
            "id": handle.id,
            "object": kind,
            "created": int(time.time()),
            "model": self.limits.model,
        }

    def _response(self, handle: Handle, events: list[Event]) -> dict[str, Any]:
        text = TextStream(self.tokenizer, handle.request.stop)
        n = 0
        for e in events:
            if e.kind == "token":
                text.add(e.token)
                n += 1
        text.flush()
        self._remember(handle, text, events[-1])
        reason = self._finish_reason(events[-1].detail)
        out = self._head(handle, chunk=False)
        if handle.request.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text.text},
                "finish_reason": reason,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": text.text, "finish_reason": reason, "logprobs": None}
        out["choices"] = [choice]
        out["usage"] = self._usage(handle, n)
        if handle.request.return_details:
            out["details"] = self._details(events[-1])
        return out

    def _chunk(self, handle: Handle, delta: str, detail: str | None, first: bool) -> bytes:
        """One SSE chunk, from a per-request prefix built once (this runs once per token).
        `detail`: None, or the terminal event's detail (the finish reason follows from it)."""
        reason = None if detail is None else self._finish_reason(detail)
        prefix = self._prefixes.get(handle.id)
        if prefix is None:
            head = json.dumps(self._head(handle, chunk=True), separators=(",", ":"))
            prefix = self._prefixes[handle.id] = "data: " + head[:-1] + ',"choices":[{"index":0,'
        end = "null" if reason is None else json.dumps(reason)
        if handle.request.chat:
            role = ',"role":"assistant"' if first else ""
            body = f'"delta":{{"content":{json.dumps(delta)}{role}}},"finish_reason":{end}'
        else:
            body = f'"text":{json.dumps(delta)},"finish_reason":{end}'
        return (prefix + body + ',"logprobs":null}]}\n\n').encode()

    async def _sse(self, handle: Handle, first: Event) -> AsyncIterator[bytes]:
        """One chunk per generated token (the last carries the finish reason), then a usage
        chunk when asked for, then [DONE]. The chunks of every event already delivered (one
        engine step's, or a multi-step call's several tokens) go out in one write. Cancels the
        request if the client goes away."""
        text = TextStream(self.tokenizer, handle.request.stop)
        n, sent_first, end = 0, False, None
        events = [first]
        try:
            while end is None:
                while not handle.queue.empty():
                    events.append(handle.queue.get_nowait())
                out = []
                for i, e in enumerate(events):
                    if e.kind == "token":
                        n += 1
                        delta = text.add(e.token)
                        # the finish event of a step comes right behind its token: take it along
                        nxt = events[i + 1] if i + 1 < len(events) else None
                        if nxt is not None and nxt.kind in TERMINAL:
                            delta += text.flush()
                            out.append(self._chunk(handle, delta, nxt.detail or "", not sent_first))
                            end = nxt
                            break
                        out.append(self._chunk(handle, delta, None, not sent_first))
                        sent_first = True
                    elif e.kind in TERMINAL:
                        out.append(
                            self._chunk(handle, text.flush(), e.detail or "", not sent_first)
                        )
                        end = e
                        break
                if end is not None:
                    self._remember(handle, text, end)
                    out += self._tail(handle, n, end)
                if out:
                    yield b"".join(out)
                events = [await handle.queue.get()] if end is None else []
        finally:
            self._prefixes.pop(handle.id, None)
            if not handle.done:  # the client went away (or the stream failed): stop the work
                self.loop.cancel(handle.id)

    def _tail(self, handle: Handle, n: int, end: Event) -> list[bytes]:
        """What a stream sends after its last token: usage / details when asked, [DONE]."""
        out = []
        if handle.request.include_usage or handle.request.return_details:
            tail = self._head(handle, chunk=True)
            tail["choices"] = []
            if handle.request.include_usage:
                tail["usage"] = self._usage(handle, n)
            if handle.request.return_details:
                tail["details"] = self._details(end)
            out.append(_sse(tail))
        return out + [b"data: [DONE]\n\n"]
