"""The flusher as a real process: crash points, drain on SIGTERM, poison entries, published stats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.flusher import install_consumer
from agent.settings import AgentSettings
from agent.store.keys import GROUP, Keys
from agent.store.store import ConversationStore
from harness.inspect import backlog, stored_ids
from harness.processes import FlusherProcess
from harness.servers import RedisServer, wait_until


@pytest.mark.parametrize("point", ["flusher.after_write", "flusher.after_commit"])
async def test_kill_9_at_a_crash_point_loses_and_duplicates_nothing(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path, point: str
) -> None:
    convs = [await store.open(f"crash-{i}") for i in range(3)]
    sent = [await c.append("user", "u", f"{c.room} #{n}") for n in range(40) for c in convs]
    marker = tmp_path / "fault-reached"
    doomed = FlusherProcess(
        settings,
        tmp_path / "doomed",
        {"APPLIANCE_FAULT_POINTS": point, "APPLIANCE_FAULT_MARKER": str(marker)},
    ).start(ready=False)
    assert doomed.wait(30) == -9
    assert marker.read_text().split() == [point]
    if point == "flusher.after_write":
        assert stored_ids(settings) == []  # killed before commit: the transaction rolled back
    else:
        assert sorted(stored_ids(settings)) == sorted(m.id for m in sent)  # committed, never acknowledged
    flusher = FlusherProcess(settings, tmp_path / "healthy").start()
    try:
        wait_until(lambda: backlog(redis_server.client(), settings) == 0, 30, "the stream drained")
    finally:
        assert flusher.terminate() == 0
    assert stored_ids(settings) == sorted(m.id for m in sent)  # every message, exactly once


async def test_a_restarted_flusher_of_the_same_install_reads_its_own_pending_entries(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    """With the default consumer name (one per install, kept in the spool directory), a flusher killed holding a
    batch is followed by one with the same name, which reads that batch at once: no other flusher's claim of
    stale entries is needed (here it would come after an hour)."""
    default = settings.model_copy(
        update={"flusher": settings.flusher.model_copy(update={"consumer": "", "claim_idle_ms": 3_600_000})}
    )
    conv = await store.open("restarted")
    sent = [await conv.append("user", "u", f"m{i}") for i in range(40)]
    marker = tmp_path / "fault-reached"
    faults = {"APPLIANCE_FAULT_POINTS": "flusher.after_write", "APPLIANCE_FAULT_MARKER": str(marker)}
    doomed = FlusherProcess(default, tmp_path / "doomed", faults).start(ready=False)
    assert doomed.wait(30) == -9
    name = install_consumer(default.store.spool_dir)
    client = redis_server.client()
    stream = Keys(default.store.key_prefix).stream
    held = client.xpending(stream, GROUP)
    assert held["pending"] > 0 and [c["name"].decode() for c in held["consumers"]] == [name]
    flusher = FlusherProcess(default, tmp_path / "restarted").start()
    try:
        wait_until(lambda: backlog(client, default) == 0, 30, "the stream drained")
    finally:
        assert flusher.terminate() == 0
    assert stored_ids(default, conv.id) == [m.id for m in sent]
    assert [c["name"].decode() for c in client.xinfo_consumers(stream, GROUP)] == [name]


async def test_sigterm_drains_the_backlog_and_exits_0(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    conv = await store.open("drain")
    flusher = FlusherProcess(settings, tmp_path).start()
    sent = [await conv.append("user", "u", f"m{i}") for i in range(2000)]
    assert flusher.terminate() == 0
    assert backlog(redis_server.client(), settings) == 0
    assert stored_ids(settings, conv.id) == [m.id for m in sent]


async def test_poison_entries_are_set_aside_and_the_rest_flows(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    conv = await store.open("poison")
    before = await conv.append("user", "u", "before")
    client = redis_server.client()
    stream = store.redis.keys.stream
    good = before.encode()
    poison = [
        {"k": "m", "v": b"not json"},
        {"k": "m", "v": good.replace(b"before", b"nul \\u0000 inside")},  # what PostgreSQL text rejects
        {"k": "m", "v": good.replace(b'"r":"user"', b'"r":"wizard"')},
        {"k": "zz", "v": b"{}"},
    ]
    for fields in poison:
        client.xadd(stream, fields)  # type: ignore[arg-type]
    after = await conv.append("user", "u", "after")
    flusher = FlusherProcess(settings, tmp_path).start()
    try:
        wait_until(lambda: backlog(client, settings) == 0, 30, "the stream drained")
        wait_until(
            lambda: int(client.hget(store.redis.keys.flusher_stats, "dead_lettered") or 0) == 4,
            10,
            "4 entries reported as dead-lettered",
        )
    finally:
        assert flusher.terminate() == 0
    assert stored_ids(settings, conv.id) == [before.id, after.id]
    dead: Any = client.xrange(store.redis.keys.dead)
    assert len(dead) == 4
    assert all(fields[b"reason"] for _id, fields in dead)
    assert "set aside" in flusher.output()


async def test_stats_are_published_for_operators(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    conv = await store.open("stats")
    for i in range(10):
        await conv.append("user", "u", f"m{i}")
    client = redis_server.client()
    flusher = FlusherProcess(settings, tmp_path).start()
    try:
        wait_until(
            lambda: client.hget(store.redis.keys.flusher_stats, "persisted") == b"10",
            20,
            "persisted=10 in the stats hash",
        )
        published: Any = client.hgetall(store.redis.keys.flusher_stats)
        stats = {k.decode(): v.decode() for k, v in published.items()}
        assert stats["backlog"] == "0"
        assert stats["dead_lettered"] == "0"
        assert stats["spool_files"] == "0"
        assert float(stats["flush_lag_p99_ms"]) > 0
        assert int(stats["pid"]) == flusher.pid
        assert 0 < client.ttl(store.redis.keys.flusher_stats) <= 10  # vanishes when the flusher dies
    finally:
        flusher.terminate()


async def test_a_flusher_on_a_new_install_starts_without_an_error(
    settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    """No stream and no group yet (a first install): its claim loop once ran before the group existed (NOGROUP)."""
    flusher = FlusherProcess(settings, tmp_path).start()
    assert flusher.terminate() == 0  # its last figures are published as it exits, after every loop ran once
    errors = redis_server.client().hget(Keys(settings.store.key_prefix).flusher_stats, "errors")
    assert errors == b"0", (tmp_path / "flusher.log").read_text()


async def test_flusher_recreates_a_lost_stream_and_group(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    conv = await store.open("lost")
    flusher = FlusherProcess(settings, tmp_path).start()
    try:
        first = await conv.append("user", "u", "before")
        wait_until(lambda: stored_ids(settings, conv.id) == [first.id], 20, "the first message stored")
        redis_server.client().delete(store.redis.keys.stream)  # group gone with it
        second = await conv.append("user", "u", "after")
        wait_until(lambda: len(stored_ids(settings, conv.id)) == 2, 20, "the second message stored")
    finally:
        assert flusher.terminate() == 0
    assert stored_ids(settings, conv.id) == [first.id, second.id]
