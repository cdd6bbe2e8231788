"""Streamed token ids -> text deltas for the API: incremental, UTF-8 safe, stop strings cut.

token ids (one at a time) -> TextStream.add -> the text they add (maybe "") -> ...
                             TextStream.flush at the end -> the rest
"""

from __future__ import annotations

from jaxserve.tokenizer import Tokenizer

__all__ = ["TextStream"]


class TextStream:
    """Token ids -> text deltas, decoding only the last few tokens per step (a window that
    starts one token before the unread ones, so a tokenizer's leading-space rules see their
    context). Holds back an incomplete UTF-8 character and any end of the text that may begin
    a stop string; the text ends before the first stop string."""

    def __init__(self, tokenizer: Tokenizer | None, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self._text = ""  # decoded so far (complete characters)
        self._prefix = 0  # ids[_prefix:_read] decode to the end of _text: the context window
        self._read = 0  # ids before this are in _text
        self._cut: int | None = None  # where the first stop string begins, once seen
        self.sent = 0  # characters already handed out
        self._longest = max((len(s) for s in stop), default=0)

    def _advance(self, final: bool) -> None:
        if self.tokenizer is None or self._cut is not None:
            return
        decode = self.tokenizer.decode
        old = decode(self.ids[self._prefix : self._read]) if self._read > self._prefix else ""
        new = decode(self.ids[self._prefix :])
        if len(new) > len(old) and (final or not new.endswith("\ufffd")):
            start = len(self._text)
            self._text += new[len(old) :]
            self._prefix, self._read = self._read, len(self.ids)
            if self.stop:  # a new stop string must end in the new text
                lo = max(0, start - self._longest + 1)
                hits = [i for i in (self._text.find(s, lo) for s in self.stop) if i >= 0]
                if hits:
                    self._cut = min(hits)
                    self._text = self._text[: self._cut]

    def add(self, token: int) -> str:
        self.ids.append(token)
        self._advance(final=False)
        end = len(self._text) if self._cut is not None else len(self._text) - self._held()
        return self._upto(end)

    def flush(self) -> str:
        self._advance(final=True)
        return self._upto(len(self._text))

    def _held(self) -> int:
        """Length of the longest end of the text that begins a stop string."""
        held, text = 0, self._text
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _upto(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta, self.sent = self._text[self.sent : end], end
        return delta

    @property
    def text(self) -> str:
        return self._text

    @property
    def cut(self) -> bool:
        """A stop string ended the text (tokens after it are not part of it)."""
        return self._cut is not None
