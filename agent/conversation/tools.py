"""Tools the agent can call mid-conversation: a plain Python function becomes a `Tool`.

    @tool
    def book_table(day: str, people: int, time: str = "19:00") -> str:
        \"\"\"Book a table.

        Args:
            day: the day, e.g. "Friday"
            people: how many guests
        \"\"\"

The JSON schema the model sees comes from the signature (str, int, float, bool, Literal and
Enum values, `X | None`, `list[X]`, `dict`); the docstring's first paragraph is the tool's
description and its `Args:` lines describe the parameters. Two parameter names are not part of
the schema but filled in for each call: `context` (the call's context object from the offer,
read-only) and `call` (its `CallControl`: `end_call()`, `session_id`).

A call (`run_call`) parses and checks the model's JSON arguments against the signature, runs
the function (a sync one in a thread) under its timeout and returns a `ToolOutcome` whose
`content` is what the model reads next: the result, or `{"error": ...}` saying what went
wrong (bad arguments, an unknown tool, a failure, a timeout). A tool's exception never
escapes; cancellation (barge-in) always does.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import logging
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, overload

from agent.clock import Clock
from agent.engines.interfaces import ToolCall, ToolSpec

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
INJECTED = ("context", "call")  # parameter names filled in per call, not by the model
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # what OpenAI accepts as a function name
_RESULT_CHARS = 4000  # a tool result longer than this is cut before the model reads it


class ToolArgumentsError(ValueError):
    """The model's arguments do not fit the tool's signature (the message says how)."""


class ToolError(Exception):
    """Raise it from a tool to tell the model what went wrong, in words it may repeat
    (any other exception reaches the model only as "the tool failed")."""


class CallControl:
    """What a tool may do to its call: read the offer's `context`, end the call after the
    reply being spoken (`end_call()`), say something later (`announce_after`, a timer)."""

    def __init__(
        self,
        session_id: str = "",
        context: Mapping[str, Any] | None = None,
        announcer: Callable[[float, str], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.context: Mapping[str, Any] = types.MappingProxyType(dict(context or {}))
        self.hangup = asyncio.Event()
        self.announcer = announcer  # the session's: speaks text after a delay, when idle

    def end_call(self) -> None:
        """Hang up once the reply now being spoken (the farewell) has played."""
        self.hangup.set()

    @property
    def ending(self) -> bool:
        return self.hangup.is_set()

    def announce_after(self, delay_s: float, text: str) -> None:
        """Say `text` in `delay_s` (once the agent is not speaking); ToolError if this call
        cannot (no session behind it)."""
        if self.announcer is None:
            raise ToolError("this call cannot speak on its own")
        self.announcer(delay_s, text)


# --- schema from a signature ------------------------------------------------------------------


def json_schema(annotation: Any) -> dict[str, Any]:
    """The JSON schema of one parameter type (TypeError for a type a model cannot send)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is str:
        return {"type": "string"}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    if annotation is float:
        return {"type": "number"}
    if origin is Literal:
        values = list(args)
        return {**_literal_type(values), "enum": values}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [m.value for m in annotation]
        return {**_literal_type(values), "enum": values}
    if _is_union(annotation):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unions other than `X | None` are not supported: {annotation}")
        return json_schema(inner[0])
    if annotation is list or origin in (list, Sequence, tuple):
        if args and not (origin is tuple and len(args) != 2):
            return {"type": "array", "items": json_schema(args[0])}
        return {"type": "array"}
    if annotation is dict or origin in (dict, Mapping):
        return {"type": "object"}
    raise TypeError(f"unsupported parameter type {annotation!r}")


def _literal_type(values: list[Any]) -> dict[str, Any]:
    kinds = {type(v) for v in values}
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if len(kinds) == 1 and (kind := kinds.pop()) in names:
        return {"type": names[kind]}
    return {}


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (typing.Union, types.UnionType)


def _doc_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (first paragraph) and `Args:` descriptions of a docstring."""
    text = inspect.cleandoc(doc or "")
    paragraphs = re.split(r"\n\s*\n", text, maxsplit=1)
    description = " ".join(paragraphs[0].split()) if text else ""
    args: dict[str, str] = {}
    in_args, current, indent = False, "", -1
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(r"^(Args|Arguments|Parameters):$", stripped):
            in_args, indent = True, -1
            continue
        if not in_args or not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            in_args = False  # the next section
            continue
        m = re.match(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", stripped)
        if m and (indent < 0 or depth <= indent):
            indent, current = depth, m.group(1)
            args[current] = m.group(2)
        elif current:
            args[current] = f"{args[current]} {stripped}".strip()
    if description.startswith(("Args:", "Arguments:", "Parameters:")):
        description = ""
    return description, args


# --- checking the model's arguments ---------------------------------------------------------


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """`value` (decoded JSON) as `annotation` wants it, or ToolArgumentsError naming `where`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if _is_union(annotation):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_value(value, inner[0], where)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ToolArgumentsError(f"{where} must be a string")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ToolArgumentsError(f"{where} must be true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ToolArgumentsError(f"{where} must be an integer")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ToolArgumentsError(f"{where} must be a number")
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ToolArgumentsError(f"{where} must be one of {json.dumps(list(args))}")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            values = [m.value for m in annotation]
            raise ToolArgumentsError(f"{where} must be one of {json.dumps(values)}") from None
    if annotation is list or origin in (list, Sequence, tuple):
        if not isinstance(value, list):
            raise ToolArgumentsError(f"{where} must be a list")
        if args:
            items = [check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        return value
    if annotation is dict or origin in (dict, Mapping):
        if isinstance(value, dict):
            return value
        raise ToolArgumentsError(f"{where} must be an object")
    raise ToolArgumentsError(f"{where}: unsupported type")


# --- the tool -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    name: str
    annotation: Any
    required: bool


class Tool:
    """A function the model may call; build it with `@tool` (see the module docstring)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ends_turn: bool = False,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r}: use letters, digits, _ or - (max 64)")
        if timeout_s <= 0:
            raise ValueError("a tool's timeout must be positive")
        self.timeout_s = timeout_s
        self.ends_turn = ends_turn  # after it, the turn ends without asking the model again
        self.is_async = inspect.iscoroutinefunction(fn)
        doc_description, arg_docs = _doc_parts(fn.__doc__)
        self.description = description if description is not None else doc_description
        hints = typing.get_type_hints(fn)
        self._params: list[_Param] = []
        self.injected: tuple[str, ...] = ()
        properties: dict[str, Any] = {}
        required: list[str] = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"tool {self.name}: *args and **kwargs are not supported")
            if p.name in INJECTED:
                self.injected += (p.name,)
                continue
            if p.name not in hints:
                raise TypeError(f"tool {self.name}: parameter {p.name!r} needs a type hint")
            try:
                schema = json_schema(hints[p.name])
            except TypeError as exc:
                raise TypeError(f"tool {self.name}, parameter {p.name!r}: {exc}") from None
            if p.name in arg_docs:
                schema["description"] = arg_docs[p.name]
            properties[p.name] = schema
            is_required = p.default is inspect.Parameter.empty
            if is_required:
                required.append(p.name)
            self._params.append(_Param(p.name, hints[p.name], is_required))
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The plain function, so a decorated tool can still be called (and tested) as one."""
        return self.fn(*args, **kwargs)

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    def bind(self, arguments: str | Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments for `arguments` (the model's JSON text, or already decoded);
        ToolArgumentsError saying what is wrong if they do not fit the signature."""
        if isinstance(arguments, str):
            try:
                decoded = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise ToolArgumentsError("the arguments are not valid JSON") from None
        else:
            decoded = dict(arguments)
        if not isinstance(decoded, dict):
            raise ToolArgumentsError("the arguments must be a JSON object")
        known = {p.name for p in self._params}
        unknown = sorted(set(decoded) - known)
        if unknown:
            raise ToolArgumentsError(f"unknown argument(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for p in self._params:
            if p.name not in decoded:
                if p.required:
                    raise ToolArgumentsError(f"missing required argument {p.name!r}")
                continue
            kwargs[p.name] = check_value(decoded[p.name], p.annotation, repr(p.name))
        return kwargs

    async def invoke(self, kwargs: Mapping[str, Any], clock: Clock) -> Any:
        """Run the function with checked `kwargs` (plus the injected ones) under the timeout
        (TimeoutError past it). A sync function runs in a thread: on a timeout we stop
        waiting for it, but a thread cannot be stopped, so keep sync tools short."""
        async with clock.timeout(self.timeout_s):
            if self.is_async:
                result = self.fn(**kwargs)
                assert isinstance(result, Awaitable)
                return await result
            return await asyncio.to_thread(self.fn, **kwargs)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    ends_turn: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    ends_turn: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a `Tool` of a function: `@tool` or `@tool(timeout_s=2)`."""

    def make(f: Callable[..., Any]) -> Tool:
        return Tool(f, name=name, description=description, timeout_s=timeout_s, ends_turn=ends_turn)

    return make(fn) if fn is not None else make


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    return obj if isinstance(obj, Tool) else Tool(obj)


class Toolbox:
    """The tools of one agent, by name."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self.tools: dict[str, Tool] = {}
        for t in map(as_tool, tools):
            if t.name in self.tools:
                raise ValueError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t

    def __bool__(self) -> bool:
        return bool(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def specs(self) -> list[ToolSpec]:
        return [t.spec() for t in self.tools.values()]

    def with_tools(self, extra: Iterable[Tool]) -> Toolbox:
        """This toolbox plus `extra` (a tool of the same name here wins)."""
        box = Toolbox(self.tools.values())
        for t in extra:
            box.tools.setdefault(t.name, t)
        return box


# --- one call -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolOutcome:
    """One call as it ran: `content` is what the model reads next (the result, or
    `{"error": ...}`); `error` is set when it did not succeed."""

    call: ToolCall
    content: str
    error: str | None
    ms: float
    ends_turn: bool = False

    def event(self) -> dict[str, Any]:
        """The `tool` data-channel event."""
        try:
            arguments: Any = json.loads(self.call.arguments or "{}")
        except ValueError:
            arguments = self.call.arguments
        out: dict[str, Any] = {"type": "tool", "name": self.call.name, "arguments": arguments}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["result"] = self.content
        out["ms"] = round(self.ms, 1)
        return out


def result_text(result: Any) -> str:
    """A tool's return value as the text the model reads."""
    if result is None:
        text = "done"
    elif isinstance(result, str):
        text = result
    else:
        try:
            text = json.dumps(result, default=str, ensure_ascii=False)
        except ValueError:  # a circular structure
            text = str(result)
    if len(text) > _RESULT_CHARS:
        text = text[: _RESULT_CHARS - 1] + "…"
    return text


async def run_call(
    toolbox: Toolbox, call: ToolCall, control: CallControl, clock: Clock
) -> ToolOutcome:
    """Run one call the model asked for; never raises but CancelledError."""
    t0 = clock.now()

    def failed(error: str) -> ToolOutcome:
        ms = (clock.now() - t0) * 1000
        return ToolOutcome(call, json.dumps({"error": error}), error, ms)

    found = toolbox.tools.get(call.name)
    if found is None:
        log.warning("the model called an unknown tool %r", call.name)
        return failed(f"there is no tool named {call.name!r}")
    try:
        kwargs = found.bind(call.arguments)
    except ToolArgumentsError as exc:
        log.warning("tool %s: bad arguments from the model: %s", call.name, exc)
        return failed(f"bad arguments: {exc}")
    injected = {"context": control.context, "call": control}
    kwargs.update({k: injected[k] for k in found.injected})
    try:
        result = await found.invoke(kwargs, clock)
    except TimeoutError:
        log.warning("tool %s timed out after %gs", call.name, found.timeout_s)
        return failed(f"the tool timed out after {found.timeout_s:g} s")
    except ToolError as exc:
        log.info("tool %s refused: %s", call.name, exc)
        return failed(str(exc))
    except Exception:
        log.exception("tool %s failed", call.name)
        return failed("the tool failed")
    ms = (clock.now() - t0) * 1000
    log.info("tool %s ran in %.0f ms", call.name, ms)
    return ToolOutcome(call, result_text(result), None, ms, ends_turn=found.ends_turn)


# --- built-in tools -------------------------------------------------------------------------


async def _end_call(call: CallControl) -> str:
    """Hang up. Use it when the caller says goodbye or is done, in the same response as your
    short farewell: the call ends once the farewell has been heard."""
    call.end_call()
    return "the call ends after your farewell"


END_CALL = Tool(_end_call, name="end_call", ends_turn=True)
