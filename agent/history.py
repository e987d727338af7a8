"""The conversation as the agent's context holds it: stored messages to chat items, and tool calls to messages.

A tool call and its result are stored as two messages of role ``tool`` (the call's arguments, then its output),
with the call's id, name and kind in the metadata, so that an agent resumed after a crash knows which tools it
already ran. A restored context never holds a call without its output nor an output without its call: the LLM
providers refuse either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from livekit.agents import llm

from agent.models import SPEAKER_KEY
from agent.store.records import Message

STORED_KEY = "message_id"  # extra key of items the session has already stored
TOOL_CALL = "call"  # metadata["tool"] of a stored call; its content is the arguments (JSON text)
TOOL_OUTPUT = "output"  # metadata["tool"] of a stored result; its content is the output


def to_chat_message(message: Message) -> llm.ChatMessage:
    """A stored user, assistant or system message; the LLM sees only content, so a user's names its speaker."""
    if message.role == "user":
        return llm.ChatMessage(
            role="user",
            content=[f"{message.participant}: {message.content}"],
            extra={SPEAKER_KEY: message.participant, STORED_KEY: message.id},
        )
    return llm.ChatMessage(role=message.role, content=[message.content], extra={STORED_KEY: message.id})


def tool_records(
    call: llm.FunctionCall, output: llm.FunctionCallOutput, max_bytes: int
) -> list[tuple[str, dict[str, Any]]]:
    """(content, metadata) of the two messages that store a call and its output, in that order. An output over
    the store's limit is cut (at a character boundary) and says so, rather than lost."""
    text = output.output
    cut = len(text.encode()) > max_bytes
    if cut:
        text = text.encode()[:max_bytes].decode(errors="ignore")
    ids = {"call_id": call.call_id, "name": call.name}
    return [
        (call.arguments, {"tool": TOOL_CALL, **ids}),
        (text, {"tool": TOOL_OUTPUT, **ids, "is_error": output.is_error, **({"truncated": True} if cut else {})}),
    ]


def restore(window: Iterable[Message]) -> list[llm.ChatItem]:
    """The stored window as context items: a call is kept only with its output, an output only with its call
    (a window's first messages may be an output whose call fell off; a crash may leave a call without output)."""
    messages = list(window)
    calls = {m.metadata.get("call_id") for m in messages if _tool(m) == TOOL_CALL}
    outputs = {m.metadata.get("call_id") for m in messages if _tool(m) == TOOL_OUTPUT}
    paired = calls & outputs
    items: list[llm.ChatItem] = []
    seen_calls: set[Any] = set()
    for message in messages:
        kind = _tool(message)
        if kind is None:
            if message.role != "tool":  # a tool message of no known kind is nothing a provider takes
                items.append(to_chat_message(message))
            continue
        call_id = message.metadata.get("call_id")
        if call_id not in paired:
            continue
        if kind == TOOL_CALL:
            seen_calls.add(call_id)
            items.append(
                llm.FunctionCall(
                    call_id=str(call_id),
                    name=str(message.metadata.get("name", "")),
                    arguments=message.content,
                    extra={STORED_KEY: message.id},
                )
            )
        elif call_id in seen_calls:  # an output before its call cannot be told to a provider
            items.append(
                llm.FunctionCallOutput(
                    call_id=str(call_id),
                    name=str(message.metadata.get("name", "")),
                    output=message.content,
                    is_error=bool(message.metadata.get("is_error", False)),
                )
            )
    return _without_orphans(items)


def _without_orphans(items: list[llm.ChatItem]) -> list[llm.ChatItem]:
    """Drop a call whose output was dropped for coming before it."""
    answered = {i.call_id for i in items if isinstance(i, llm.FunctionCallOutput)}
    return [i for i in items if not isinstance(i, llm.FunctionCall) or i.call_id in answered]


def _tool(message: Message) -> str | None:
    """The kind of a stored tool message (call or output), None for any other message."""
    if message.role != "tool":
        return None
    kind = message.metadata.get("tool")
    return kind if kind in (TOOL_CALL, TOOL_OUTPUT) else None
