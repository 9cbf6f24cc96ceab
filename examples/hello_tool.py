"""The smallest agent with a tool: it can tell the caller a secret word.

    ringback serve --agent examples/hello_tool.py                  # built-in responder
    RINGBACK_OPENAI_BASE_URL=http://localhost:11434/v1 RINGBACK_OPENAI_MODEL=llama3.2 \
        ringback serve --agent examples/hello_tool.py --llm openai   # any OpenAI-compatible LLM
"""

from agent.api import Agent, tool


@tool
def secret_word(language: str = "English") -> str:
    """The secret word of the day, in a language.

    Args:
        language: the language to give it in, e.g. "French"
    """
    words = {"english": "lighthouse", "french": "phare", "german": "Leuchtturm"}
    return words.get(language.lower(), "lighthouse")


agent = Agent(
    prompt="You are a friendly voice agent. When asked for the secret word, use the "
    "secret_word tool. Answer in one short spoken sentence.",
    tools=[secret_word],
)
