"""Compaction: keeping a long root conversation within the root model's window.

When the next request would reach ``compaction_threshold`` (default 0.85) of
``root_context_window`` tokens, the root model summarizes its own work so far; the
conversation goes on from the system prompt, the query and that summary, and the
whole transcript is bound in the sandbox as ``transcript``, where the model's code
can read any of it. Tokens are the provider's own count of the last request and
reply, plus an estimate (four characters a token) for what was added since; before
the first reply, the estimate alone.
"""

from __future__ import annotations

from typing import Protocol

from rlm.backends import Sandbox
from rlm.config import RLMConfig
from rlm.prompts import COMPACT, compacted
from rlm.session import SessionState

Messages = list[dict[str, str]]


class Conversation(Protocol):
    """What compaction needs of a root loop (a :class:`~rlm.loop.RootLoop`)."""

    sandbox: Sandbox
    session: SessionState
    transcript: Messages

    async def root_call(self, messages: Messages, iteration: int) -> str: ...


#: Characters per token, for text the provider has not counted yet.
CHARS_PER_TOKEN = 4


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    return sum(len(m.get("content") or "") for m in messages) // CHARS_PER_TOKEN + 4 * len(messages)


class Compaction:
    """One run's view of its conversation's size, and the compactions it made."""

    def __init__(self, config: RLMConfig) -> None:
        self.window = config.root_context_window
        self.threshold = config.compaction_threshold
        #: The provider's count for the last request and its reply, and how many
        #: messages that request had.
        self._counted = 0
        self._counted_messages = 0
        self.compactions = 0

    def heard(self, messages: list[dict[str, str]], prompt_tokens: int, completion: int) -> None:
        """Record the provider's usage for a request of ``messages`` (and its reply)."""
        self._counted = prompt_tokens + completion
        self._counted_messages = len(messages) + 1

    def tokens(self, messages: list[dict[str, str]]) -> int:
        """The next request's size: counted where the provider said, estimated after."""
        if not self._counted or self._counted_messages > len(messages):
            return estimate_tokens(messages)
        return self._counted + estimate_tokens(messages[self._counted_messages :])

    def due(self, messages: list[dict[str, str]]) -> bool:
        return self.window is not None and self.tokens(messages) >= self.threshold * self.window

    async def maybe_compact(self, loop: Conversation, messages: Messages, iteration: int) -> None:
        """Summarize ``messages`` in place when they are near the window."""
        if not self.due(messages) or len(messages) <= 3:
            return
        before = self.tokens(messages)
        request = [*messages, {"role": "user", "content": COMPACT}]
        summary = await loop.root_call(request, iteration)
        self.compactions += 1
        loop.transcript.extend(
            [{"role": "user", "content": COMPACT}, {"role": "assistant", "content": summary}]
        )
        await loop.sandbox.bind("transcript", [dict(m) for m in loop.transcript])
        messages[2:] = [{"role": "user", "content": compacted(summary)}]
        self._counted = 0
        after = self.tokens(messages)
        loop.session.event(
            "compaction",
            iteration=iteration,
            tokens_before=before,
            tokens_after=after,
            messages=len(loop.transcript),
        )
