"""Read what the tiers hold, straight from the servers, for assertions."""

from __future__ import annotations

import psycopg
import redis

from agent.settings import AgentSettings
from agent.store.keys import Keys


def connect(settings: AgentSettings) -> psycopg.Connection[tuple[object, ...]]:
    pg = settings.postgres
    return psycopg.connect(
        host=pg.host,
        port=pg.port,
        dbname=pg.dbname,
        user=pg.user,
        password=pg.password.get_secret_value() if pg.password else None,
        autocommit=True,
    )


def stored_ids(settings: AgentSettings, conversation_id: str | None = None) -> list[str]:
    """Message ids in PostgreSQL (all, duplicates would show), in id order."""
    with connect(settings) as conn:
        if conversation_id is None:
            rows = conn.execute("SELECT id::text FROM messages ORDER BY id").fetchall()
        else:
            rows = conn.execute(
                "SELECT id::text FROM messages WHERE conversation_id = %s ORDER BY id", (conversation_id,)
            ).fetchall()
    return [str(r[0]) for r in rows]


def conversation_status(settings: AgentSettings, conversation_id: str) -> str | None:
    with connect(settings) as conn:
        row = conn.execute("SELECT status FROM conversations WHERE id = %s", (conversation_id,)).fetchone()
    return str(row[0]) if row else None


def backlog(redis_client: redis.Redis, settings: AgentSettings) -> int:
    """Entries in the write-ahead stream not yet flushed (flushed ones are deleted)."""
    return int(redis_client.xlen(Keys(settings.store.key_prefix).stream))


def recent_count(redis_client: redis.Redis, settings: AgentSettings, conversation_id: str) -> int:
    """How many messages a conversation's Redis list holds (its head is the coverage marker)."""
    return max(0, int(redis_client.llen(Keys(settings.store.key_prefix).conversation(conversation_id))) - 1)
