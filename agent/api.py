"""The Python API for your own agent: a prompt, tools, optionally your own LLM, call hooks.

    # my_agent.py — run with: ringback serve --agent my_agent.py
    from agent.api import Agent, tool

    @tool
    def opening_hours(day: str) -> str:
        \"\"\"When the shop is open on a day.\"\"\"
        return "9 to 5" if day.lower() != "sunday" else "closed"

    agent = Agent(prompt="You answer questions about the shop.", tools=[opening_hours])

`--agent` takes a file path (`examples/restaurant.py`) or a module (`package.module`), with
`:name` to pick the object (default: `agent`). `prompt` may be a function of the call's
context (the JSON object the offer carried); a plain prompt gets the context appended when
there is one. `llm`: any object with the LLM interface (agent/engines/interfaces.py) replaces
the `--llm` engine. `on_call_start(call)` / `on_call_end(call)` (sync or async) get the call's
`CallControl`; what they raise is logged, never ends the call.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.conversation.builtins import builtin_tools
from agent.conversation.tools import CallControl, Tool, Toolbox, ToolError, tool
from agent.engines.interfaces import LLM

__all__ = ["Agent", "CallControl", "Tool", "ToolError", "load_agent", "tool"]

log = logging.getLogger(__name__)

Hook = Callable[[CallControl], Any]  # may return an awaitable


@dataclass
class Agent:
    prompt: str | Callable[[Mapping[str, Any]], str] | None = None
    tools: Iterable[Tool | Callable[..., Any]] = ()
    llm: LLM | None = None
    on_call_start: Hook | None = None
    on_call_end: Hook | None = None
    builtins: bool = True  # end_call, time_in, set_timer (your tools win on a name clash)
    toolbox: Toolbox = field(init=False)

    def __post_init__(self) -> None:
        box = Toolbox(self.tools)
        self.toolbox = box.with_tools(builtin_tools()) if self.builtins else box

    def system_prompt(self, context: Mapping[str, Any], default: str) -> str:
        """The system prompt for a call with `context`."""
        if callable(self.prompt):
            return self.prompt(context)
        prompt = self.prompt or default
        if context:
            prompt += "\n\nAbout this call (JSON from the caller's page): " + json.dumps(
                dict(context), ensure_ascii=False
            )
        return prompt

    async def run_hook(self, which: str, call: CallControl) -> None:
        hook: Hook | None = getattr(self, which)
        if hook is None:
            return
        try:
            result = hook(call)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("agent hook %s failed", which)


class AgentLoadError(ValueError):
    pass


def load_agent(spec: str) -> Agent:
    """The Agent named by `spec`: `path/to/file.py[:name]` or `package.module[:name]`."""
    target, _, name = spec.partition(":")
    name = name or "agent"
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target).resolve()
            if not path.is_file():
                raise AgentLoadError(f"--agent {spec}: no such file {path}")
            module_name = f"ringback_agent_{path.stem}"
            loaded = importlib.util.spec_from_file_location(module_name, path)
            if loaded is None or loaded.loader is None:
                raise AgentLoadError(f"--agent {spec}: cannot load {path}")
            module = importlib.util.module_from_spec(loaded)
            sys.modules[module_name] = module
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except AgentLoadError:
        raise
    except Exception as exc:
        raise AgentLoadError(f"--agent {spec}: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, name, None)
    if not isinstance(found, Agent):
        raise AgentLoadError(f"--agent {spec}: {name!r} is not an agent.api.Agent")
    return found
