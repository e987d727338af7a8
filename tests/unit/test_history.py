"""Stored messages back into the agent's context: tool calls kept whole, never split from their output."""

from __future__ import annotations

from livekit.agents import llm

from agent.history import restore, tool_records
from agent.store.records import Message, new_message


def message(role: str, content: str, metadata: dict[str, object] | None = None, who: str = "alice") -> Message:
    return new_message("c1", role, who, content, metadata, max_content_bytes=1000, max_metadata_bytes=1000)


def tool_pair(call_id: str, output: str = "shipped") -> list[Message]:
    call = llm.FunctionCall(call_id=call_id, name="lookup_order", arguments='{"order_id": "A-1"}')
    out = llm.FunctionCallOutput(call_id=call_id, name="lookup_order", output=output, is_error=False)
    return [message("tool", content, metadata) for content, metadata in tool_records(call, out, 1000)]


def kinds(items: list[llm.ChatItem]) -> list[str]:
    return [i.type if not isinstance(i, llm.ChatMessage) else i.role for i in items]


def test_a_call_and_its_output_come_back_as_they_were_stored() -> None:
    window = [message("user", "where is A-1?"), *tool_pair("call_1"), message("assistant", "it shipped")]
    items = restore(window)
    assert kinds(items) == ["user", "function_call", "function_call_output", "assistant"]
    call, out = items[1], items[2]
    assert isinstance(call, llm.FunctionCall) and isinstance(out, llm.FunctionCallOutput)
    assert (call.call_id, call.name, call.arguments) == ("call_1", "lookup_order", '{"order_id": "A-1"}')
    assert (out.call_id, out.output, out.is_error) == ("call_1", "shipped", False)
    assert items[0].text_content == "alice: where is A-1?"  # type: ignore[union-attr]


def test_a_window_that_starts_at_an_output_drops_it() -> None:
    _, out = tool_pair("call_1")
    items = restore([out, message("assistant", "it shipped"), *tool_pair("call_2")])
    assert kinds(items) == ["assistant", "function_call", "function_call_output"]
    assert {i.call_id for i in items if isinstance(i, llm.FunctionCall)} == {"call_2"}


def test_a_call_whose_output_was_never_stored_is_dropped() -> None:
    """A crash between the two writes leaves a call alone: a provider refuses a call with no output."""
    call, _ = tool_pair("call_1")
    items = restore([message("user", "hi"), call, message("user", "again")])
    assert kinds(items) == ["user", "user"]


def test_an_output_stored_before_its_call_drops_both() -> None:
    call, out = tool_pair("call_1")
    assert kinds(restore([out, call])) == []


def test_a_tool_message_of_no_known_kind_is_left_out() -> None:
    assert kinds(restore([message("tool", "?", {}), message("user", "hi")])) == ["user"]


def test_an_output_over_the_limit_is_cut_and_marked() -> None:
    call = llm.FunctionCall(call_id="c", name="n", arguments="{}")
    out = llm.FunctionCallOutput(call_id="c", name="n", output="é" * 10, is_error=True)
    (_, call_md), (text, out_md) = tool_records(call, out, max_bytes=5)
    assert text == "éé" and out_md["truncated"] is True and out_md["is_error"] is True
    assert call_md == {"tool": "call", "call_id": "c", "name": "n"}
