"""Tier 2: LLM faults in the TurnManager on a fake clock — filler, mid-reply apology, the
fallback LLM, and the circuit breaker (closed → open → half-open → closed)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence

import pytest

from agent.clock import FakeClock
from agent.conversation.breaker import BreakerConfig, BreakerState, CircuitBreaker, LlmChain
from agent.conversation.engine_faults import FALLBACK_REPLY, FILLER, MID_REPLY_APOLOGY
from agent.conversation.turns import TurnConfig, TurnManager
from agent.engines.interfaces import LLM, EngineError, Message
from tests.turn_rig import Rig, ScriptedLlm, ScriptedTts


class ClockLlm:
    """Streams `reply` word by word after `first_s` on the fake clock; `fail_after` words
    in, it raises (mid-reply) or, with `hang`, never answers."""

    def __init__(
        self,
        clock: FakeClock,
        reply: str = "It's noon. Anything else?",
        first_s: float = 0.0,
        fail_after: int | None = None,
        hang: bool = False,
        name: str = "clocked",
    ) -> None:
        self.clock, self.reply, self.first_s = clock, reply, first_s
        self.fail_after, self.hang, self.name = fail_after, hang, name
        self.calls = 0

    async def complete(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        self.calls += 1
        if self.hang:
            await self.clock.sleep(3600)
        if self.first_s:
            await self.clock.sleep(self.first_s)
        for i, word in enumerate(self.reply.split(" ")):
            if self.fail_after is not None and i >= self.fail_after:
                raise EngineError("upstream http://10.0.0.9/v1 said 500: secret body")
            yield word if i == 0 else " " + word

    async def aclose(self) -> None:
        return None


def rig_for(make_llm: Callable[[FakeClock], LLM], config: TurnConfig | None = None) -> Rig:
    """test_turns' Rig (fake clock, fake sink, scripted TTS) with an LLM on its clock."""
    rig = Rig(ScriptedLlm(), ScriptedTts(), config)
    rig.tm = TurnManager(
        make_llm(rig.clock),
        rig.tts,
        rig.sink,
        rig.conversation,
        rig.clock,
        rig.events.append,
        config or TurnConfig(),
    )
    rig.sink._ref[0] = rig.tm
    return rig


async def turn(rig: Rig, text: str = "hello") -> None:
    await rig.tm.on_speech_start()
    await rig.tm.on_final(text, rig.metrics())
    rig.turn += 1


async def finish(rig: Rig, seconds: float = 0.0) -> None:
    if seconds:
        await rig.clock.advance(seconds, step=0.05)
    await rig.play_all()


async def test_slow_first_token_says_the_filler_then_the_answer() -> None:
    rig = rig_for(lambda clock: ClockLlm(clock, first_s=1.0))
    await turn(rig)
    await rig.clock.advance(0.45, step=0.05)
    await rig.settle()
    assert rig.tts.texts == [], "no filler before llm_filler_after_s"
    await finish(rig, 0.7)
    assert rig.tts.texts == [FILLER, "It's noon.", "Anything else?"]
    (done,) = rig.of_type("turn")
    assert done["reply"] == "It's noon. Anything else?", "the filler stays out of the reply"
    assert rig.conversation.messages("next")[-2].content == "It's noon. Anything else?"
    assert not rig.of_type("error")


async def test_a_reply_cut_mid_sentence_ends_with_an_apology_not_a_fragment() -> None:
    reply = "Paris is lovely in spring. And the river is"
    rig = rig_for(lambda clock: ClockLlm(clock, reply=reply, fail_after=8))
    await turn(rig)
    await finish(rig, 0.1)
    assert rig.tts.texts == ["Paris is lovely in spring.", MID_REPLY_APOLOGY]
    errors = rig.of_type("error")
    assert [e["message"] for e in errors] == ["the language model stopped mid-reply"]
    assert "10.0.0.9" not in str(rig.events) and "secret" not in str(rig.events)


async def test_a_hanging_primary_falls_back_to_the_second_llm() -> None:
    llms: list[ClockLlm] = []

    def chain(clock: FakeClock) -> LlmChain:
        llms.append(ClockLlm(clock, hang=True, name="primary"))
        llms.append(ClockLlm(clock, reply="The fallback answers.", name="fallback"))
        return LlmChain.of(llms[0], llms[1], BreakerConfig(failures=1, reset_s=30), clock)

    rig = rig_for(chain)
    primary, fallback = llms
    await turn(rig)
    await finish(rig, 1.6)
    assert rig.tts.texts == [FILLER, "The fallback answers."]
    assert not rig.of_type("error"), "the caller got an answer"
    assert [(e["role"], e["state"]) for e in rig.of_type("engine")] == [("primary", "open")]
    # Open: the next turn goes straight to the fallback, without waiting on the primary.
    await turn(rig)
    await finish(rig, 0.1)
    assert primary.calls == 1 and fallback.calls == 2
    assert rig.tts.texts[-1] == "The fallback answers."


async def test_breaker_opens_answers_at_once_then_recovers() -> None:
    chains: list[LlmChain] = []

    def make(clock: FakeClock) -> LlmChain:
        chains.append(LlmChain.of(ClockLlm(clock, hang=True), None, BreakerConfig(2, 10), clock))
        return chains[0]

    rig = rig_for(make)
    (chain,) = chains
    llm = chain.members[0].llm
    assert isinstance(llm, ClockLlm)
    for _ in range(2):
        await turn(rig)
        await finish(rig, 1.6)
    (breaker,) = chain.breakers.values()
    assert breaker.state is BreakerState.OPEN
    # Open: the apology comes at once, the LLM is not asked.
    await turn(rig)
    await finish(rig)
    assert llm.calls == 2 and rig.tts.texts[-1] == FALLBACK_REPLY
    assert rig.of_type("error")[-1]["message"] == "the language model is unavailable"
    # After reset_s one trial goes through; it works, so the breaker closes.
    llm.hang = False
    await rig.clock.advance(10, step=0.5)
    await turn(rig)
    await finish(rig, 0.1)
    assert llm.calls == 3 and rig.tts.texts[-1] == "Anything else?"
    assert state_of(breaker) is BreakerState.CLOSED
    states = [e["state"] for e in rig.of_type("engine")]
    assert states == ["open", "closed"]


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read through a call: mypy keeps `breaker.state` narrowed by an
    earlier assert, though the state moves with calls and with the clock."""
    return breaker.state


def test_breaker_state_machine() -> None:
    clock = FakeClock()
    b = CircuitBreaker("x", BreakerConfig(failures=2, reset_s=5), clock)
    assert b.allow() and state_of(b) is BreakerState.CLOSED
    b.record_failure()
    assert state_of(b) is BreakerState.CLOSED
    b.record_success()
    b.record_failure()
    assert state_of(b) is BreakerState.CLOSED, "failures must be consecutive"
    b.record_failure()
    assert state_of(b) is BreakerState.OPEN and not b.allow()
    clock._now += 5
    assert state_of(b) is BreakerState.HALF_OPEN
    assert b.allow() and not b.allow(), "one trial at a time"
    b.release()
    assert b.allow()
    b.record_failure()
    assert state_of(b) is BreakerState.OPEN, "a failed trial opens it again"
    clock._now += 5
    assert b.allow()
    b.record_success()
    assert state_of(b) is BreakerState.CLOSED
    assert b.transitions == {"closed": 1, "open": 2, "half_open": 2}


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failures=0)
    with pytest.raises(ValueError):
        TurnConfig(llm_first_token_timeout_s=0)
