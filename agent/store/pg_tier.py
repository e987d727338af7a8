"""The PostgreSQL tier: every message, the source of truth. Shared by the store (Redis bypassed) and the flusher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from agent.resources import sql
from agent.settings import PostgresSettings
from agent.store.records import ConversationEvent, Message, Status, timestamp

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]


def make_pool(settings: PostgresSettings, *, min_size: int | None = None) -> AsyncConnectionPool[AsyncConn]:
    """A pool that is not opened yet: connections do not survive a fork, so each room's process, forked from the
    worker's forkserver, opens its own."""
    kwargs: dict[str, Any] = {"autocommit": True}
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    return AsyncConnectionPool(
        settings.conninfo(),
        kwargs=kwargs,
        min_size=settings.pool_min if min_size is None else min_size,
        max_size=settings.pool_max,
        timeout=settings.connect_timeout_s,
        open=False,
        # A connection from before a PostgreSQL restart is dead: test each one before handing it out (one
        # round trip), so a restart costs nothing but the reconnect.
        check=AsyncConnectionPool.check_connection,
        name="appliance",
    )


async def write_batch(
    conn: AsyncConn, messages: Sequence[Message], events: Sequence[ConversationEvent], *, bypass: bool
) -> None:
    """Store events then messages in the caller's transaction, idempotently.

    ``bypass`` marks messages that never passed through Redis, so resume knows the Redis list lacks them.
    """
    for event in events:
        await conn.execute(
            sql("write_event"),
            {
                "id": event.conversation_id,
                "room": event.room,
                "status": event.status,
                "at": timestamp(event.at),
            },
        )
    if not messages:
        return
    conversation_ids = [m.conversation_id for m in messages]
    ids = [m.id for m in messages]
    created_ats = [timestamp(m.created_at) for m in messages]
    await conn.execute(
        sql("write_conversations"),
        {"bypass": bypass, "conversation_ids": conversation_ids, "ids": ids, "created_ats": created_ats},
    )
    await conn.execute(
        sql("write_messages"),
        {
            "conversation_ids": conversation_ids,
            "ids": ids,
            "roles": [m.role for m in messages],
            "participants": [m.participant for m in messages],
            "contents": [m.content for m in messages],
            "created_ats": created_ats,
            "metadatas": [orjson.dumps(m.metadata).decode() for m in messages],
        },
    )


async def write_dead_letters(conn: AsyncConn, rows: Sequence[tuple[str, str, bytes]]) -> None:
    """(entry id, reason, raw) of entries the flusher set aside while Redis refused its dead-letter stream."""
    await conn.execute(
        sql("write_dead_letters"),
        {"entries": [r[0] for r in rows], "reasons": [r[1] for r in rows], "raws": [r[2] for r in rows]},
    )


async def last_messages(conn: AsyncConn, conversation_id: str, n: int) -> list[Message]:
    cur = await conn.execute(sql("last_messages"), {"conversation_id": conversation_id, "n": n})
    rows = await cur.fetchall()
    return [
        Message(
            id=row[0],
            conversation_id=row[1],
            role=row[2],
            participant=row[3],
            content=row[4],
            created_at=float(row[5]),
            metadata=orjson.loads(row[6]),
        )
        for row in reversed(rows)
    ]


async def room_conversation(conn: AsyncConn, room: str) -> tuple[str, Status] | None:
    cur = await conn.execute(sql("room_conversation"), {"room": room})
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None


async def conversation(conn: AsyncConn, conversation_id: str) -> tuple[Status, str | None] | None:
    """(status, bypass_id) of a stored conversation, or None when PostgreSQL has not seen it."""
    cur = await conn.execute(sql("conversation"), {"id": conversation_id})
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None
