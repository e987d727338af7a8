"""The store against real Redis and PostgreSQL: round trip, resume from each tier, lifecycle, window, TTL."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import AgentSettings
from agent.store.store import ConversationStore
from harness.inspect import conversation_status, stored_ids
from harness.processes import FlusherProcess
from harness.servers import RedisServer, wait_until


async def test_round_trip(store: ConversationStore, settings: AgentSettings, tmp_path: Path) -> None:
    conv = await store.open("room-1")
    sent = [await conv.append("user", "alice", f"hello {i}", {"n": i}) for i in range(5)]
    flusher = FlusherProcess(settings, tmp_path).start()
    try:
        wait_until(lambda: len(stored_ids(settings, conv.id)) == 5, 20, "5 messages in postgres")
    finally:
        assert flusher.terminate() == 0
    assert stored_ids(settings, conv.id) == [m.id for m in sent]
    again = await store.open("room-1")
    assert again.id == conv.id
    assert [m.content for m in again.window] == [f"hello {i}" for i in range(5)]
    assert again.window[2].metadata == {"n": 2}
    assert again.window[0].participant == "alice"


async def test_resume_from_redis(store: ConversationStore) -> None:
    conv = await store.open("room-r")
    sent = [await conv.append("user" if i % 2 else "assistant", "p", f"m{i}") for i in range(30)]
    resumed = await store.open("room-r")
    assert resumed.resumed_from == "redis"
    assert [m.id for m in resumed.window] == [m.id for m in sent[-20:]]


async def test_resume_from_postgres_after_redis_keys_are_gone(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    conv = await store.open("room-pg")
    sent = [await conv.append("user", "bob", f"m{i}") for i in range(25)]
    flusher = FlusherProcess(settings, tmp_path).start()
    try:
        wait_until(lambda: len(stored_ids(settings, conv.id)) == 25, 20, "25 messages in postgres")
    finally:
        flusher.terminate()
    client = redis_server.client()
    keys = list(client.scan_iter(match=f"{settings.store.key_prefix}*"))
    assert keys
    client.delete(*keys)
    resumed = await store.open("room-pg")
    assert resumed.id == conv.id
    assert resumed.resumed_from == "merge"
    assert [m.id for m in resumed.window] == [m.id for m in sent[-20:]]


async def test_resume_includes_unflushed_stream_entries_when_list_is_deleted(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    conv = await store.open("room-s")
    first = [await conv.append("user", "a", f"early {i}") for i in range(10)]
    flusher = FlusherProcess(settings, tmp_path).start()
    wait_until(lambda: len(stored_ids(settings, conv.id)) == 10, 20, "10 messages in postgres")
    flusher.terminate()
    late = [await conv.append("user", "a", f"late {i}") for i in range(15)]  # flusher stopped: only in Redis
    redis_server.client().delete(store.redis.keys.conversation(conv.id))
    resumed = await store.open("room-s")
    assert resumed.resumed_from == "merge"
    assert [m.id for m in resumed.window] == [m.id for m in (first + late)[-20:]]
    # The merge re-seeded the list: the next resume needs Redis only.
    assert (await store.open("room-s")).resumed_from == "redis"


async def test_ended_conversation_is_not_resumed_under_the_same_room_name(
    store: ConversationStore, settings: AgentSettings
) -> None:
    conv = await store.open("shop")
    await conv.append("user", "customer-1", "my card number is secret")
    await conv.close("ended")
    assert conversation_status(settings, conv.id) == "ended"
    later = await store.open("shop")
    assert later.id != conv.id
    assert list(later.window) == []
    # Named explicitly in room metadata, it is opened again with its history.
    explicit = await store.open("other-room", conversation_id=conv.id)
    assert [m.content for m in explicit.window] == ["my card number is secret"]


async def test_interrupted_conversation_is_resumed(store: ConversationStore) -> None:
    conv = await store.open("drain-room")
    await conv.append("user", "a", "before the drain timeout")
    await conv.close("interrupted")
    again = await store.open("drain-room")
    assert again.id == conv.id
    assert [m.content for m in again.window] == ["before the drain timeout"]


async def test_window_keeps_the_last_messages(
    store: ConversationStore, redis_server: RedisServer, settings: AgentSettings
) -> None:
    conv = await store.open("long")
    sent = [await conv.append("user", "a", f"m{i}") for i in range(150)]
    assert [m.id for m in conv.window] == [m.id for m in sent[-20:]]
    cached = await store.redis.cached(conv.id)
    assert cached.complete
    assert [m.id for m in cached.messages] == [m.id for m in sent[-settings.store.cache_size :]]


async def test_ttl_is_refreshed_on_each_write(store: ConversationStore, redis_server: RedisServer) -> None:
    conv = await store.open("ttl")
    await conv.append("user", "a", "one")
    key = store.redis.keys.conversation(conv.id)
    client = redis_server.client()
    client.expire(key, 5)
    assert client.ttl(key) <= 5
    await conv.append("user", "a", "two")
    assert client.ttl(key) > 86_000
    assert client.ttl(store.redis.keys.stream) == -1  # the write-ahead log never expires


@pytest.mark.parametrize("appends", [1, 3])
async def test_list_born_from_an_append_is_not_trusted(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path, appends: int
) -> None:
    """After expiry, a new list holds only new messages: resume must merge with PostgreSQL."""
    conv = await store.open("expired")
    old = [await conv.append("user", "a", f"old {i}") for i in range(5)]
    flusher = FlusherProcess(settings, tmp_path).start()
    wait_until(lambda: len(stored_ids(settings, conv.id)) == 5, 20, "5 messages in postgres")
    flusher.terminate()
    redis_server.client().delete(store.redis.keys.conversation(conv.id))
    new = [await conv.append("user", "a", f"new {i}") for i in range(appends)]
    resumed = await store.open("expired")
    assert resumed.resumed_from == "merge"
    assert [m.id for m in resumed.window] == [m.id for m in old + new]
