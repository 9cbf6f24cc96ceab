"""LLM interface and per-session conversation history.

An engine streams text deltas for a list of messages: `complete(messages)` returns an async
iterator, cancellable at any await (barge-in closes it with `aclose()`). Engines know nothing
of turns or audio; the caller owns timeouts and fallbacks.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": str(self.role), "content": self.content}


class LlmError(Exception):
    """An engine failure; `retryable` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class LLM(Protocol):
    name: str

    def complete(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]: ...

    async def aclose(self) -> None: ...


DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant on a phone-like call. Answer in one to three short "
    "spoken sentences. No lists, no markdown, no emojis."
)


@dataclass
class Conversation:
    """History sent to the LLM. Only what the user actually heard of a reply is kept."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_turns: int = 20
    turns: list[Message] = field(default_factory=list)

    def messages(self, pending_user_text: str | None = None) -> list[Message]:
        msgs = [Message(Role.SYSTEM, self.system_prompt), *self.turns]
        if pending_user_text is not None:
            msgs.append(Message(Role.USER, pending_user_text))
        return msgs

    def add_exchange(self, user_text: str, heard_reply: str) -> None:
        self.turns.append(Message(Role.USER, user_text))
        if heard_reply:
            self.turns.append(Message(Role.ASSISTANT, heard_reply))
        excess = len(self.turns) - 2 * self.max_turns
        if excess > 0:
            del self.turns[:excess]
