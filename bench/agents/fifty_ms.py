"""The agent bench/tool_overhead.py calls: one tool that returns after 50 ms, nothing else
(`ringback serve --agent bench/agents/fifty_ms.py --llm openai`)."""

import asyncio

from agent.api import Agent, tool

TOOL_MS = 50


@tool
async def look_up(topic: str = "") -> str:
    """Look a topic up (always takes 50 ms).

    Args:
        topic: what to look up
    """
    await asyncio.sleep(TOOL_MS / 1000)
    return "ready"


# No built-in tools: every request offers the same single tool, so both bench variants send
# the model the same request body apart from this turn's tool messages.
agent = Agent(prompt="You answer in one short sentence.", tools=[look_up], builtins=False)
