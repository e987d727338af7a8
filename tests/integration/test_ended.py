"""Ended wins, and nothing is replaced silently, while tiers are partly unreachable (real servers stopped and
started). Each later open uses a new store, as a room's next process would."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.exceptions import OutOfMemoryError

from agent.settings import AgentSettings
from agent.store.keys import Keys
from agent.store.spool import Spool
from agent.store.store import ConversationStore, StoreUnavailable
from harness.inspect import conversation_status
from harness.processes import FlusherProcess
from harness.servers import PostgresServer, RedisServer, wait_until
from tests.conftest import fresh_database, make_settings


def outage_settings(redis_server: RedisServer, pg: PostgresServer, tmp_path: Path) -> AgentSettings:
    return make_settings(redis_server, pg, "appliance", tmp_path, breaker_interval_s=0.2)


def mapping(redis_server: RedisServer, settings: AgentSettings, room: str) -> tuple[bytes | str | None, ...]:
    return tuple(redis_server.client().hmget(Keys(settings.store.key_prefix).room(room), ["id", "status"]))


async def ended_while_redis_was_down(
    private_redis: RedisServer, private_pg: PostgresServer, settings: AgentSettings
) -> str:
    """PostgreSQL stores "ended", the Redis write of it fails, and Redis comes back saying "active"."""
    async with ConversationStore(settings) as store:
        conv = await store.open("shop")
        await conv.append("user", "customer-1", "my card number is secret")
        private_redis.stop()
        await conv.close("ended")
    assert conversation_status(settings, conv.id) == "ended"
    private_redis.start()
    assert mapping(private_redis, settings, "shop") == (conv.id.encode(), b"active")
    return conv.id


async def test_an_end_redis_missed_wins_while_postgres_is_down(
    private_redis: RedisServer, private_pg: PostgresServer, tmp_path: Path
) -> None:
    settings = outage_settings(private_redis, private_pg, tmp_path)
    ended = await ended_while_redis_was_down(private_redis, private_pg, settings)
    private_pg.stop()
    async with ConversationStore(settings) as store:
        later = await store.open("shop")  # PostgreSQL unreachable, Redis says "active", the spool says "ended"
    assert later.id != ended
    assert list(later.window) == []


async def test_the_end_reaches_redis_when_the_flusher_imports_it(
    private_redis: RedisServer, private_pg: PostgresServer, tmp_path: Path
) -> None:
    settings = outage_settings(private_redis, private_pg, tmp_path)
    ended = await ended_while_redis_was_down(private_redis, private_pg, settings)
    flusher = FlusherProcess(settings, tmp_path).start()
    try:
        wait_until(lambda: not Spool(settings.store.spool_dir).files(), 30, "the spool imported")
    finally:
        assert flusher.terminate() == 0
    assert mapping(private_redis, settings, "shop") == (ended.encode(), b"ended")
    assert private_redis.client().ttl(Keys(settings.store.key_prefix).room("shop")) > 0
    private_pg.stop()  # and the spool is empty now: only Redis can tell
    async with ConversationStore(settings) as store:
        later = await store.open("shop")
    assert later.id != ended
    assert list(later.window) == []


async def test_an_end_refused_at_maxmemory_still_marks_the_room(pg: PostgresServer, tmp_path: Path) -> None:
    server = RedisServer(maxmemory="4mb").start()
    try:
        settings = make_settings(server, pg, fresh_database(pg), tmp_path)
        async with ConversationStore(settings) as store:
            conv = await store.open("shop")
            client = server.client()
            i = 0
            while True:  # keys without a TTL, which volatile-lru cannot evict: Redis refuses writes
                try:
                    client.set(f"pinned:{i}", b"x" * 10_000)
                except OutOfMemoryError:
                    break
                i += 1
            await conv.close("ended")
        assert conversation_status(settings, conv.id) == "ended"
        assert mapping(server, settings, "shop") == (conv.id.encode(), b"ended")
    finally:
        server.close()


async def test_with_both_down_an_interrupted_conversation_is_not_replaced(
    private_redis: RedisServer, private_pg: PostgresServer, tmp_path: Path
) -> None:
    settings = outage_settings(private_redis, private_pg, tmp_path)
    async with ConversationStore(settings) as store:
        conv = await store.open("drain-room")
        await conv.append("user", "a", "before the drain timeout")
        await conv.close("interrupted")
    private_redis.stop()
    private_pg.stop()
    async with ConversationStore(settings) as store:
        with pytest.raises(StoreUnavailable, match="'drain-room': PostgreSQL and Redis are unavailable"):
            await store.open("drain-room")
    private_redis.start()
    private_pg.start()
    async with ConversationStore(settings) as store:
        again = await store.open("drain-room")
    assert again.id == conv.id
    assert [m.content for m in again.window] == ["before the drain timeout"]


async def test_with_postgres_down_a_lost_mapping_is_found_in_the_stream(
    private_pg: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = outage_settings(redis_server, private_pg, tmp_path)
    room_key = Keys(settings.store.key_prefix).room("opened-in-outage")
    private_pg.stop()
    async with ConversationStore(settings) as store:
        conv = await store.open("opened-in-outage")  # its event waits in the stream
        await conv.append("user", "a", "hello")
    assert redis_server.client().ttl(room_key) > 0  # never without a TTL, so always evictable
    redis_server.client().delete(room_key)  # as volatile-lru may evict it, or its TTL end it
    async with ConversationStore(settings) as store:
        again = await store.open("opened-in-outage")
    assert again.id == conv.id
    assert [m.content for m in again.window] == ["hello"]
