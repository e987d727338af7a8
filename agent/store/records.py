"""What the store writes: messages and conversation events, their validation and their one encoding."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

import orjson
import uuid_utils

Role = Literal["user", "assistant", "system", "tool"]
ROLES: frozenset[str] = frozenset(get_args(Role))
MAX_ID_BYTES = 255
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # exactly Unicode category Cc, 8x faster than unicodedata


class InvalidMessage(ValueError):
    """Input the store refuses; the message names the field and the reason. Nothing was written."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name


@dataclass(frozen=True, slots=True)
class Message:
    id: str  # UUIDv7, so ids sort by creation time and make every write idempotent
    conversation_id: str
    role: Role
    participant: str
    content: str
    created_at: float  # seconds since the epoch
    metadata: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "c": self.conversation_id,
                "r": self.role,
                "p": self.participant,
                "t": self.content,
                "at": self.created_at,
                "md": self.metadata,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Message:
        """Parse an encoded message; raises InvalidMessage when it is not one (a poison entry)."""
        try:
            d = orjson.loads(raw)
            msg = cls(
                id=d["id"],
                conversation_id=d["c"],
                role=d["r"],
                participant=d["p"],
                content=d["t"],
                created_at=float(d["at"]),
                metadata=d["md"],
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidMessage("entry", f"not an encoded message ({exc})") from None
        _check_stored(msg)
        return msg


def new_message(
    conversation_id: str,
    role: str,
    participant: str,
    content: str,
    metadata: Any = None,
    *,
    max_content_bytes: int,
    max_metadata_bytes: int,
) -> Message:
    """Validate the input and build a message with a fresh UUIDv7, or raise InvalidMessage."""
    check_id("conversation_id", conversation_id)
    if role not in ROLES:
        raise InvalidMessage("role", f"{role!r} is not one of {', '.join(sorted(ROLES))}")
    check_id("participant", participant, allow_empty=True)
    check_text("content", content, max_content_bytes)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidMessage("metadata", f"must be a JSON object, not {type(metadata).__name__}")
    try:
        encoded = orjson.dumps(metadata)
    except TypeError as exc:
        raise InvalidMessage("metadata", f"not JSON-serialisable ({exc})") from None
    if b"\\u0000" in encoded:
        raise InvalidMessage("metadata", "contains NUL (\\x00), which PostgreSQL cannot store")
    if len(encoded) > max_metadata_bytes:
        raise InvalidMessage("metadata", f"{len(encoded)} bytes exceeds the maximum of {max_metadata_bytes}")
    return Message(
        id=str(uuid_utils.uuid7()),
        conversation_id=conversation_id,
        role=cast(Role, role),
        participant=participant,
        content=content,
        created_at=time.time(),
        metadata=metadata,
    )


def check_id(field_name: str, value: object, *, allow_empty: bool = False) -> None:
    """Ids and identities: text, at most 255 UTF-8 bytes, no control characters. Any other character is safe."""
    if not isinstance(value, str):
        raise InvalidMessage(field_name, f"must be text, not {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidMessage(field_name, "must not be empty")
    size = len(_utf8(field_name, value))
    if size > MAX_ID_BYTES:
        raise InvalidMessage(field_name, f"{size} bytes exceeds the maximum of {MAX_ID_BYTES}")
    found = _CONTROL.search(value)
    if found:
        raise InvalidMessage(field_name, f"control character {found.group()!r} at offset {found.start()}")


def check_text(field_name: str, value: object, max_bytes: int) -> None:
    if not isinstance(value, str):
        raise InvalidMessage(field_name, f"must be text, not {type(value).__name__}")
    size = len(_utf8(field_name, value))
    if size > max_bytes:
        raise InvalidMessage(field_name, f"{size} bytes exceeds the maximum of {max_bytes}")
    nul = value.find("\x00")
    if nul >= 0:
        raise InvalidMessage(field_name, f"contains NUL (\\x00) at offset {nul}, which PostgreSQL cannot store")


def _utf8(field_name: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessage(field_name, f"lone surrogate at offset {exc.start}: not valid Unicode") from None


def _check_stored(msg: Message) -> None:
    """What a decoded entry must satisfy before PostgreSQL sees it (entries may come from older writers)."""
    check_id("conversation_id", msg.conversation_id)
    check_id("participant", msg.participant, allow_empty=True)
    if msg.role not in ROLES:
        raise InvalidMessage("role", f"{msg.role!r} is not a role")
    check_text("content", msg.content, max_bytes=1 << 30)
    if not isinstance(msg.metadata, dict) or b"\\u0000" in orjson.dumps(msg.metadata):
        raise InvalidMessage("metadata", "not a JSON object PostgreSQL can store")
    try:
        if uuid_utils.UUID(msg.id).version != 7:
            raise ValueError
    except (ValueError, TypeError):
        raise InvalidMessage("id", f"{msg.id!r} is not a UUIDv7") from None


Status = Literal["active", "interrupted", "ended"]


@dataclass(frozen=True, slots=True)
class ConversationEvent:
    """A conversation was opened or closed. ``room`` is set only for conversations keyed by their room name."""

    conversation_id: str
    room: str | None
    status: Status
    at: float

    def encode(self) -> bytes:
        return orjson.dumps({"c": self.conversation_id, "room": self.room, "s": self.status, "at": self.at})

    @classmethod
    def decode(cls, raw: bytes | str) -> ConversationEvent:
        try:
            d = orjson.loads(raw)
            event = cls(conversation_id=d["c"], room=d["room"], status=d["s"], at=float(d["at"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidMessage("entry", f"not an encoded conversation event ({exc})") from None
        check_id("conversation_id", event.conversation_id)
        if event.room is not None:
            check_id("room", event.room)
        if event.status not in ("active", "interrupted", "ended"):
            raise InvalidMessage("status", f"{event.status!r} is not a status")
        return event


def timestamp(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)
