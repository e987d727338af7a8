"""Validation of what the store accepts: every refusal names the field and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from agent.store.keys import Keys
from agent.store.records import ConversationEvent, InvalidMessage, Message, new_message


def make(**overrides: Any) -> Message:
    args: dict[str, Any] = {"conversation_id": "c", "role": "user", "participant": "alice", "content": "hi"}
    args |= overrides
    return new_message(**args, max_content_bytes=65_536, max_metadata_bytes=16_384)


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"content": "a\x00b"}, "content", "NUL"),
        ({"content": "bad \ud800 surrogate"}, "content", "lone surrogate at offset 4"),
        ({"content": "x" * 65_537}, "content", "65537 bytes exceeds the maximum of 65536"),
        ({"content": "é" * 32_769}, "content", "65538 bytes exceeds"),  # bytes, not characters
        ({"role": "wizard"}, "role", "'wizard' is not one of"),
        ({"conversation_id": ""}, "conversation_id", "must not be empty"),
        ({"conversation_id": "x" * 256}, "conversation_id", "256 bytes exceeds the maximum of 255"),
        ({"conversation_id": "a\nb"}, "conversation_id", "control character"),
        ({"conversation_id": 42}, "conversation_id", "must be text"),
        ({"participant": "eve\r\n"}, "participant", "control character"),
        ({"metadata": ["not", "an", "object"]}, "metadata", "must be a JSON object, not list"),
        ({"metadata": "{}"}, "metadata", "must be a JSON object, not str"),
        ({"metadata": {"k": "nul \x00"}}, "metadata", "NUL"),
        ({"metadata": {"k": object()}}, "metadata", "not JSON-serialisable"),
        ({"metadata": {"k": "x" * 20_000}}, "metadata", "exceeds the maximum of 16384"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(overrides: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        make(**overrides)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert reason in str(info.value)


def test_content_at_the_maximum_is_accepted() -> None:
    assert len(make(content="x" * 65_536).content) == 65_536


@pytest.mark.parametrize("cid", ["*", "a:b", "{tag}", "../../etc/passwd", "x" * 255, "ünï ☃ 🎉", "conv:*:{x}"])
def test_any_printable_id_is_safe_as_a_key_part(cid: str) -> None:
    keys = Keys("appl:")
    key = keys.conversation(cid)
    assert key.startswith("appl:conv:")
    assert len(key) == len("appl:conv:") + 32
    assert all(ch in "0123456789abcdef" for ch in key.removeprefix("appl:conv:"))
    assert make(conversation_id=cid).conversation_id == cid  # the readable id stays in the value


def test_message_encoding_round_trips_exactly() -> None:
    original = make(content='emoji 🎉, quotes " and \\ and newline\n', metadata={"nested": {"a": [1, 2.5, None]}})
    assert Message.decode(original.encode()) == original


def test_ids_are_uuid7_in_creation_order() -> None:
    ids = [make().id for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000
    assert all(i[14] == "7" for i in ids)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'{"id":"x","c":"c","r":"user","p":"","t":"","at":0,"md":{}}',
        b'{"id":"01900000-0000-7000-8000-000000000000","c":"c","r":"user","p":"","t":"a\\u0000","at":0,"md":{}}',
        b'{"id":"01900000-0000-7000-8000-000000000000","c":"c","r":"user","p":"","t":"","at":0,"md":[]}',
    ],
)
def test_decoding_a_poison_entry_raises_invalid_message(raw: bytes) -> None:
    with pytest.raises(InvalidMessage):
        Message.decode(raw)


def test_conversation_event_round_trips() -> None:
    event = ConversationEvent("c:1", "room *", "ended", 12.5)
    assert ConversationEvent.decode(event.encode()) == event
    with pytest.raises(InvalidMessage):
        ConversationEvent.decode(b'{"c":"c","room":null,"s":"paused","at":1}')
