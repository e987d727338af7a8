"""The write-ahead entries' one codec: a stream entry's fields and a spool file's line.

A stream entry (XADD by agent/lua/append.lua for a message, lifecycle.lua for a conversation event) has the fields
``k`` (its kind: ``m`` message, ``c`` conversation event), ``v`` (the record, encoded by agent.store.records) and,
for a message, ``h`` (``conversation_digest`` of its conversation id, so a reader finds a conversation's entries
without decoding every one). A spool line is ``{"k": kind, "v": record}``. The flusher, resume (redis_tier) and
forget read them here.
"""

from __future__ import annotations

import orjson

from agent.store.keys import digest
from agent.store.records import ConversationEvent, InvalidMessage, Message

KIND, DIGEST, VALUE = b"k", b"h", b"v"
MESSAGE, EVENT = b"m", b"c"

Record = Message | ConversationEvent
Fields = dict[bytes, bytes]


def decode(fields: Fields) -> Record:
    """The record of a stream entry; raises InvalidMessage when it is none (a poison entry)."""
    return _decode(fields.get(KIND), fields.get(VALUE, b""))


def is_message_of(fields: Fields, conversation_digest: bytes) -> bool:
    """Whether an entry is a message of the conversation whose ``digest`` is given (no decoding)."""
    return fields.get(KIND) == MESSAGE and fields.get(DIGEST) == conversation_digest


def conversation_digest(conversation_id: str) -> bytes:
    return digest(conversation_id).encode()


def is_event(fields: Fields) -> bool:
    return fields.get(KIND) == EVENT


def spool_line(record: Record) -> bytes:
    kind = MESSAGE if isinstance(record, Message) else EVENT
    return b'{"k":"' + kind + b'","v":' + record.encode() + b"}\n"


def decode_spool_line(line: bytes) -> Record:
    """The record of a spool line; raises InvalidMessage when it is none."""
    try:
        parsed = orjson.loads(line)
        return _decode(parsed["k"].encode(), orjson.dumps(parsed["v"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidMessage("line", f"not a spool record ({exc})") from None


def conversation_of(raw: bytes) -> tuple[str | None, str | None]:
    """(conversation id, room) of an encoded record, a stream entry's ``v`` or a whole spool line, read leniently
    (forget must find a conversation's poison entries too); Nones when it names none."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if isinstance(value, dict) and value.get("k") in ("m", "c") and isinstance(value.get("v"), dict):
        value = value["v"]  # a spool line
    if not isinstance(value, dict) or not isinstance(value.get("c"), str):
        return None, None
    room = value.get("room")
    return value["c"], room if isinstance(room, str) else None


def _decode(kind: bytes | None, raw: bytes) -> Record:
    if kind == MESSAGE:
        return Message.decode(raw)
    if kind == EVENT:
        return ConversationEvent.decode(raw)
    raise InvalidMessage("k", f"unknown entry kind {kind!r}")
