"""The flusher at Redis' maxmemory: it drains a full stream, poison included, without losing anything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import OutOfMemoryError

from agent.settings import AgentSettings
from agent.store.keys import Keys
from agent.store.store import ConversationStore
from harness.inspect import backlog, connect, stored_ids
from harness.processes import FlusherProcess
from harness.servers import PostgresServer, RedisServer, wait_until
from tests.conftest import fresh_database, make_settings


@pytest.fixture
def full_redis() -> Iterator[RedisServer]:
    """A Redis scaled down from the appliance's 2 GB to a few MB, with its volatile-lru policy."""
    server = RedisServer(maxmemory="4mb").start()
    yield server
    server.close()


def used_memory(server: RedisServer) -> tuple[int, int]:
    info: Any = server.client().info("memory")
    return int(info["used_memory"]), int(info["maxmemory"])


async def test_a_full_stream_with_poison_drains_to_zero_and_redis_leaves_the_cap(
    full_redis: RedisServer, pg: PostgresServer, tmp_path: Path
) -> None:
    settings = make_settings(full_redis, pg, fresh_database(pg), tmp_path, breaker_interval_s=0.05)
    keys = Keys(settings.store.key_prefix)
    client = full_redis.client()
    async with ConversationStore(settings) as store:
        conv = await store.open("full")
        poison_id = client.xadd(keys.stream, {"k": "m", "v": b"not json"}).decode()  # type: ignore[union-attr]
        sent = []
        # Until Redis refuses appends and has evicted every key it may: the stream alone fills the cap.
        while not (store.stats.appends_postgres and refuses_xadd(client, f"{keys.prefix}probe")):
            sent.append(await conv.append("user", "u", "x" * 8000))
        assert store.stats.appends_redis > 200
    used, cap = used_memory(full_redis)
    assert used > cap * 0.9

    # Batches of one: the poison is alone in the first, nothing is deleted before its dead letter, so Redis
    # refuses that XADD.
    flusher = FlusherProcess(settings, tmp_path, {"APPLIANCE_FLUSHER__BATCH_SIZE": "1"}).start(ready=False)
    try:
        wait_until(lambda: backlog(client, settings) == 0, 60, "the full stream drained")
        wait_until(lambda: dead_lettered(client, settings) == (1, 1), 10, "the poison counted, in postgres")
        flusher.running()
    finally:
        assert flusher.terminate() == 0
    assert stored_ids(settings, conv.id) == sorted(m.id for m in sent)  # every good message, once
    with connect(settings) as db:
        rows = db.execute("SELECT entry, reason, raw FROM dead_letters").fetchall()
    assert [(entry, bytes(raw)) for entry, _reason, raw in rows] == [(poison_id, b"not json")]  # type: ignore[call-overload]
    assert rows[0][1]  # the reason
    assert "set aside in postgres table dead_letters" in flusher.output()
    used, cap = used_memory(full_redis)
    assert used < cap


def refuses_xadd(client: Any, key: str) -> bool:
    """Whether an XADD (the dead-letter stream's command) is refused as out of memory."""
    try:
        client.xadd(key, {"probe": "1"})
    except OutOfMemoryError:
        return True
    return False


def dead_lettered(client: Any, settings: AgentSettings) -> tuple[int, int]:
    published = client.hmget(Keys(settings.store.key_prefix).flusher_stats, ["dead_lettered", "dead_lettered_postgres"])
    return int(published[0] or 0), int(published[1] or 0)
