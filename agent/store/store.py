"""The conversation store a room's session uses: open, append (acknowledged), window, close.

A write is acknowledged by the first tier that takes it: Redis (list + stream, flushed to PostgreSQL later),
else PostgreSQL directly, else the local spool. Resume returns exactly the last N acknowledged messages,
from the Redis list alone when it provably covers them, else merged from every tier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import psycopg
import uuid_utils
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError

from agent import metrics
from agent.logs import brief
from agent.settings import AgentSettings
from agent.store import pg_tier
from agent.store.breaker import Breaker
from agent.store.records import ConversationEvent, Message, check_id, new_message
from agent.store.redis_tier import RedisTier, make_client
from agent.store.spool import Spool

log = logging.getLogger("agent.store")
T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """No tier acknowledged the write: Redis, PostgreSQL and the spool all failed."""


class _Failed:
    """A tier that did not answer (down, timed out, or skipped by its breaker)."""


FAILED = _Failed()


@dataclass
class StoreStats:
    appends_redis: int = 0
    appends_postgres: int = 0  # Redis down or full: written straight to PostgreSQL
    appends_spool: int = 0  # both down
    resumes_from_redis: int = 0
    resumes_merged: int = 0


class ConversationStore:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings.store
        self.redis = RedisTier(make_client(settings.redis), settings.store)
        self.pool = pg_tier.make_pool(settings.postgres)
        self.spool = Spool(settings.store.spool_dir)
        self.redis_breaker = Breaker(settings.store.breaker_interval_s)
        self.pg_breaker = Breaker(settings.store.breaker_interval_s)
        self.stats = StoreStats()

    async def start(self) -> None:
        """Open the PostgreSQL pool in the background; a database that is down now is not an error."""
        await self.pool.open(wait=False)

    async def aclose(self) -> None:
        await self.pool.close()
        await self.redis.client.aclose()

    async def __aenter__(self) -> ConversationStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self, room: str, conversation_id: str | None = None) -> Conversation:
        """The conversation for a room: the one named explicitly, else the room's latest one unless it ended."""
        check_id("room", room)
        if conversation_id is not None:
            check_id("conversation_id", conversation_id)
            cid, room_key, resuming = conversation_id, None, True
        else:
            current = await self._current(room)
            cid, room_key, resuming = current or str(uuid_utils.uuid7()), room, current is not None
        conv = Conversation(self, cid, room_key)
        if resuming:
            history, conv.resumed_from = await self._history(cid, self.settings.window_size)
            conv.window.extend(history)
        await self.record_event(ConversationEvent(cid, room_key, "active", time.time()), new=not resuming)
        log.info("conversation %s opened (%s)", cid, conv.resumed_from or "new")
        return conv

    async def _current(self, room: str) -> str | None:
        """The room's newest conversation if it may be resumed. Any tier saying "ended" wins: a reused room
        name must never show one customer another's history. With PostgreSQL down, a Redis that answers is
        trusted (its mapping, else the events waiting in the stream, which is never evicted); with Redis down too,
        only the local spool can tell, and when it cannot, open refuses rather than risk replacing an interrupted
        conversation with a new one."""
        seen: dict[str, set[str]] = {}
        pg = await self._pg(lambda conn: pg_tier.room_conversation(conn, room))
        mapped = await self._redis_op(lambda: self.redis.room_mapping(room))
        for found in (pg, mapped):
            if isinstance(found, tuple):
                seen.setdefault(found[0], set()).add(found[1])
        if isinstance(pg, _Failed) and mapped is None:  # the mapping may have been evicted
            events = await self._redis_op(lambda: self.redis.room_events(room))
            if isinstance(events, _Failed):
                mapped = events
            else:
                for event in events:
                    seen.setdefault(event.conversation_id, set()).add(event.status)
        for event in self.spool.events_for_room(room):
            seen.setdefault(event.conversation_id, set()).add(event.status)
        if not seen:
            if isinstance(pg, _Failed) and isinstance(mapped, _Failed):
                raise StoreUnavailable(
                    f"room {room!r}: PostgreSQL and Redis are unavailable, so whether its conversation may be"
                    " resumed is unknown"
                )
            return None
        newest = max(seen)  # ids of room-keyed conversations are UUIDv7: the largest is the newest
        return None if "ended" in seen[newest] else newest

    async def _history(self, cid: str, n: int) -> tuple[list[Message], Literal["redis", "merge"]]:
        row = await self._pg(lambda conn: pg_tier.conversation(conn, cid))
        bypass_id = row[1] if isinstance(row, tuple) else None
        cached = await self._redis_op(lambda: self.redis.cached(cid))
        spooled = self.spool.messages_for(cid)
        if not isinstance(cached, _Failed) and cached.complete and not spooled:
            listed = _by_id(cached.messages)
            if _covers(listed, bypass_id, n):
                self.stats.resumes_from_redis += 1
                return listed[-n:], "redis"
        parts: list[Message] = list(spooled)
        if not isinstance(cached, _Failed):
            parts += cached.messages
        pending = await self._redis_op(lambda: self.redis.pending(cid))
        stored = await self._pg(lambda conn: pg_tier.last_messages(conn, cid, self.settings.cache_size))
        for part in (pending, stored):
            if isinstance(part, list):
                parts += part
        merged = _by_id(parts)
        if isinstance(pending, _Failed) or isinstance(stored, _Failed):
            log.warning("conversation %s resumed without every tier: recent messages may be missing", cid)
        else:
            await self._redis_op(lambda: self.redis.reseed(merged))
        self.stats.resumes_merged += 1
        return merged[-n:], "merge"

    async def write(self, message: Message, *, bypassed_before: bool) -> bool:
        """Store one message in the first tier that takes it; returns True when it went around Redis."""
        started = time.perf_counter()
        tier = await self._write(message, bypassed_before=bypassed_before)
        metrics.appended(tier, time.perf_counter() - started)
        return tier != "redis"

    async def _write(self, message: Message, *, bypassed_before: bool) -> Literal["redis", "postgres", "spool"]:
        done = await self._redis_op(lambda: self.redis.append(message, mark_partial=bypassed_before))
        if not isinstance(done, _Failed):
            self.stats.appends_redis += 1
            return "redis"
        done = await self._pg(lambda conn: _write_one(conn, [message], [], bypass=True))
        if not isinstance(done, _Failed):
            self.stats.appends_postgres += 1
            return "postgres"
        try:
            await asyncio.to_thread(self.spool.write_message, message)
        except OSError as exc:
            raise StoreUnavailable(f"message {message.id} not stored: Redis, PostgreSQL and spool failed") from exc
        self.stats.appends_spool += 1
        return "spool"

    async def record_event(self, event: ConversationEvent, *, new: bool) -> None:
        """Store a conversation event: PostgreSQL first (the truth for lifecycle), and Redis (the room's mapping;
        the stream too when PostgreSQL failed). When Redis refuses it, the spool stands in for Redis, so every
        tier open reads learns the event, and a refused "ended" still marks the room's mapping if Redis allows."""
        stored = await self._pg(lambda conn: _write_one(conn, [], [event], bypass=False))
        to_stream = isinstance(stored, _Failed)
        done = await self._redis_op(lambda: self.redis.record(event, new=new, to_stream=to_stream))
        if not isinstance(done, _Failed) or (not to_stream and event.room is None):
            return
        if event.status == "ended" and event.room is not None:
            try:  # allowed at maxmemory, where the lifecycle script is refused
                await self.redis.settle(event)
            except (RedisError, OSError) as exc:
                log.warning("room %s: its Redis mapping may still say open: %s", event.room, brief(exc))
        try:
            await asyncio.to_thread(self.spool.write_event, event)
        except OSError as exc:
            if to_stream:
                raise StoreUnavailable(f"conversation {event.conversation_id}: event not stored") from exc
            log.error("conversation %s: %s reached PostgreSQL only: %s", event.conversation_id, event.status, exc)

    async def _redis_op(self, op: Callable[[], Awaitable[T]]) -> T | _Failed:
        if not self.redis_breaker.allow():
            return FAILED
        try:
            result = await op()
        except (RedisError, OSError) as exc:
            self.redis_breaker.failure()
            log.warning("redis unavailable, bypassing it for %.1fs: %s", self.redis_breaker.interval_s, brief(exc))
            return FAILED
        self.redis_breaker.success()
        return result

    async def _pg(self, op: Callable[[pg_tier.AsyncConn], Awaitable[T]]) -> T | _Failed:
        if not self.pg_breaker.allow():
            return FAILED
        try:
            async with self.pool.connection() as conn:
                result = await op(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError) as exc:
            self.pg_breaker.failure()
            log.warning("postgres unavailable, bypassing it for %.1fs: %s", self.pg_breaker.interval_s, brief(exc))
            return FAILED
        self.pg_breaker.success()
        return result


class Conversation:
    """One conversation as a room's session sees it. Create through ``ConversationStore.open``."""

    def __init__(self, store: ConversationStore, conversation_id: str, room: str | None) -> None:
        self.store = store
        self.id = conversation_id
        self.room = room  # set when keyed by the room's name, None when named explicitly
        self.window: deque[Message] = deque(maxlen=store.settings.window_size)
        self.resumed_from: Literal["redis", "merge"] | None = None
        self.closed = False
        self._bypassed = False  # this writer went around Redis since its last Redis write

    async def append(
        self, role: str, participant: str, content: str, metadata: dict[str, Any] | None = None
    ) -> Message:
        """Returns the message once a tier has acknowledged it; raises InvalidMessage or StoreUnavailable."""
        if self.closed:
            raise RuntimeError(f"conversation {self.id} is closed")
        settings = self.store.settings
        message = new_message(
            self.id,
            role,
            participant,
            content,
            metadata,
            max_content_bytes=settings.max_content_bytes,
            max_metadata_bytes=settings.max_metadata_bytes,
        )
        self._bypassed = await self.store.write(message, bypassed_before=self._bypassed)
        self.window.append(message)
        return message

    async def close(self, reason: Literal["ended", "interrupted"]) -> None:
        """Ended conversations are never resumed by room name; interrupted ones are."""
        if reason not in ("ended", "interrupted"):
            raise ValueError(f"reason: {reason!r} is not 'ended' or 'interrupted'")
        await self.store.record_event(ConversationEvent(self.id, self.room, reason, time.time()), new=False)
        self.closed = True


async def _write_one(
    conn: pg_tier.AsyncConn, messages: list[Message], events: list[ConversationEvent], *, bypass: bool
) -> None:
    async with conn.transaction():
        await pg_tier.write_batch(conn, messages, events, bypass=bypass)


def _by_id(messages: Iterable[Message]) -> list[Message]:
    return sorted({m.id: m for m in messages}.values(), key=lambda m: m.id)


def _covers(listed: list[Message], bypass_id: str | None, n: int) -> bool:
    """A complete list covers the last n unless a newer message went around Redis and is not in it."""
    if bypass_id is None or any(m.id == bypass_id for m in listed):
        return True
    return len(listed) >= n and bypass_id < listed[-n].id
