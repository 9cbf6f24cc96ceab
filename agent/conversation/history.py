"""Per-session conversation history: what the LLM is sent, and only what the user heard."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.engines.interfaces import Message, Role

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
