"""The write-ahead entries' codec: what the flusher, resume and forget read, and what they refuse."""

from __future__ import annotations

import pytest

from agent.store import wal
from agent.store.records import ConversationEvent, InvalidMessage, Message, new_message

LIMITS = {"max_content_bytes": 1000, "max_metadata_bytes": 1000}


def message(conversation: str = "conv-1") -> Message:
    return new_message(conversation, "user", "ann", "hello", **LIMITS)


def test_a_spool_line_round_trips_both_kinds() -> None:
    event = ConversationEvent("conv-1", "room-1", "active", 1.5)
    for record in (message(), event):
        line = wal.spool_line(record)
        assert line.endswith(b"\n") and wal.decode_spool_line(line) == record


@pytest.mark.parametrize(
    ("line", "field"),
    [(b"not json", "line"), (b'{"k":"x","v":{}}', "k"), (b'{"v":{}}', "line"), (b'{"k":"m","v":{"id":1}}', "entry")],
)
def test_a_bad_spool_line_is_refused_naming_what(line: bytes, field: str) -> None:
    with pytest.raises(InvalidMessage) as refused:
        wal.decode_spool_line(line)
    assert refused.value.field == field


def test_a_stream_entry_is_found_by_its_conversations_digest_and_decoded() -> None:
    m = message()
    fields = {wal.KIND: wal.MESSAGE, wal.DIGEST: wal.conversation_digest("conv-1"), wal.VALUE: m.encode()}
    assert wal.is_message_of(fields, wal.conversation_digest("conv-1"))
    assert not wal.is_message_of(fields, wal.conversation_digest("conv-2")) and not wal.is_event(fields)
    assert wal.decode(fields) == m
    with pytest.raises(InvalidMessage, match="unknown entry kind"):
        wal.decode({wal.KIND: b"z", wal.VALUE: m.encode()})


def test_forget_reads_the_conversation_of_an_entry_a_spool_line_and_junk() -> None:
    event = ConversationEvent("conv-9", "room-9", "ended", 2.0)
    assert wal.conversation_of(event.encode()) == ("conv-9", "room-9")
    assert wal.conversation_of(wal.spool_line(message("conv-3"))) == ("conv-3", None)
    assert wal.conversation_of(b'{"c": "conv-4", "junk": true}') == ("conv-4", None)  # a poison entry still counts
    assert wal.conversation_of(b"\xff") == (None, None)
