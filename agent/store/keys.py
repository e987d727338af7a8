"""Redis key names. Ids are hashed into keys, so no id can reach outside its key (``*``, ``:``, ``{}``,
newlines, very long ids); the readable id lives inside the values."""

from __future__ import annotations

from hashlib import blake2b

GROUP = "flusher"


def digest(value: str) -> str:
    return blake2b(value.encode("utf-8"), digest_size=16).hexdigest()


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stream = f"{prefix}wal"  # the write-ahead log: never expires, never evicted
        self.dead = f"{prefix}dead"  # entries the flusher set aside, with the reason
        self.flusher_stats = f"{prefix}stats:flusher"

    def conversation(self, conversation_id: str) -> str:
        """The capped list of a conversation's last messages, headed by its coverage marker."""
        return f"{self.prefix}conv:{digest(conversation_id)}"

    def room(self, room: str) -> str:
        """The conversation a room name currently maps to, and its status."""
        return f"{self.prefix}room:{digest(room)}"
