"""Chat templates, and the conversations whose turns continue from their own tokens.

    messages --template--> text --+--tokenize---------------------------> prompt ids
                                  |
                                  +--ConversationHistory.prompt_ids-----> previous turn's
                                     (a `conversation` whose last turn    prompt + output ids
                                     the text extends)                    + ids of the new text

A chat turn of a `conversation` (an API extension) is tokenized as a continuation: when the
rendered messages begin with the conversation's previous prompt and the assistant's reply to
it, the prompt is that turn's own token ids (its prompt and the ids the model emitted, not a
re-tokenization of their text) followed by the tokens of the new text. So the model sees its
conversation as it produced it, and an engine with multi-turn reuse finds the previous turn's
kept KV at the start of the prompt (`jaxserve.kvcache.reuse`). Anything else (no history, a
history the messages do not extend, a reply cut by a stop string) is tokenized afresh.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

PLAIN_TEMPLATE_DOC = (
    "each message as '<Role>: <content>' on its own line (Role capitalised), then "
    "'Assistant:' for the model to continue"
)


def plain_template(messages: Sequence[dict[str, str]]) -> str:
    """The template for tokenizers without one: see PLAIN_TEMPLATE_DOC."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def jinja_template(
    source: str, bos_token: str = "", eos_token: str = ""
) -> Callable[[list[dict[str, str]]], str]:
    """A tokenizer's chat template (Jinja, as in HF `tokenizer_config.json`), sandboxed."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str):
        raise ValueError(message)

    env.globals["raise_exception"] = raise_exception
    template = env.from_string(source)

    def render(messages: list[dict[str, str]]) -> str:
        return template.render(
            messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
        )

    return render


@dataclasses.dataclass
class Turn:
    """A conversation's last finished chat turn."""

    prompt_text: str  # the rendered messages it was tokenized from
    reply: str  # the assistant text the server returned
    ids: list[int]  # its prompt ids, then the ids the model emitted (less a final stop id)


class ConversationHistory:
    """The last turn of each conversation, least recently used dropped beyond a bound."""

    def __init__(self, max_conversations: int = 4096):
        if max_conversations < 1:
            raise ValueError(f"max_conversations must be >= 1, got {max_conversations}")
        self.max_conversations = max_conversations
        self._turns: collections.OrderedDict[str, Turn] = collections.OrderedDict()
        self.continued = 0  # turns tokenized as a continuation

    def __len__(self) -> int:
        return len(self._turns)

    def record(self, conversation: str, prompt_text: str, reply: str, ids: list[int]) -> None:
        self._turns.pop(conversation, None)
        self._turns[conversation] = Turn(prompt_text, reply, list(ids))
        while len(self._turns) > self.max_conversations:
            self._turns.popitem(last=False)

    def prompt_ids(
        self, conversation: str, text: str, tokenize: Callable[[str], list[int]]
    ) -> list[int] | None:
        """The ids of `text` continuing the conversation's last turn, or None when `text`
        does not extend it (its prompt text, then the reply; the template may put a space
        before the reply or strip it) with at least one more token."""
        turn = self._turns.get(conversation)
        if turn is None or not text.startswith(turn.prompt_text):
            return None
        rest = text[len(turn.prompt_text) :]
        for reply in dict.fromkeys((turn.reply, " " + turn.reply, turn.reply.strip())):
            if rest.startswith(reply):
                tail = tokenize(rest[len(reply) :])
                if not tail:
                    return None
                self._turns.move_to_end(conversation)
                self.continued += 1
                return turn.ids + tail
        return None
