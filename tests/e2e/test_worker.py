"""The worker against a real livekit-server: one process per room, everyone heard, every message stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit import rtc

from agent.settings import AgentSettings, LiveKitSettings, WorkerSettings
from appliance.chatclient import ChatClient
from tests.conftest import fresh_database, make_settings
from tests.harness.livekit import LiveKitServer
from tests.harness.processes import WorkerProcess
from tests.harness.servers import PostgresServer, RedisServer, free_port, wait_until


def worker_settings(base: AgentSettings, livekit: LiveKitServer, **worker: object) -> AgentSettings:
    return base.model_copy(
        update={
            "livekit": LiveKitSettings(url=livekit.url, api_key=livekit.api_key, api_secret=livekit.api_secret),
            "worker": WorkerSettings(
                health_port=free_port(),
                status_port=free_port(),
                num_idle_processes=1,
                departure_timeout_s=3,
                reconcile_every_s=1,
                orphan_after_s=2,
                drain_timeout_s=20,
                **worker,
            ),
        }
    )


@pytest.fixture
def e2e_settings(
    livekit_server: LiveKitServer, pg: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> AgentSettings:
    return worker_settings(make_settings(redis_server, pg, fresh_database(pg), tmp_path), livekit_server)


@pytest.fixture
def worker(e2e_settings: AgentSettings, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(e2e_settings, tmp_path).start()
    yield process
    if process.proc is not None and process.proc.poll() is None:
        assert process.terminate() == 0, process.output()[-3000:]


def client_options(server: LiveKitServer) -> rtc.RoomOptions:
    stun = rtc.IceServer(urls=[f"stun:{server.stun_server}"])
    return rtc.RoomOptions(rtc_config=rtc.RtcConfiguration(ice_servers=[stun]), connect_timeout=10)


@pytest.fixture
async def join(livekit_server: LiveKitServer) -> AsyncIterator[object]:
    clients: list[ChatClient] = []

    async def joiner(room: str, identity: str) -> ChatClient:
        client = ChatClient(livekit_server.url, livekit_server.token(identity, room), client_options(livekit_server))
        clients.append(await client.connect())
        return client

    yield joiner
    await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


async def test_one_process_serves_everyone_in_the_room(
    worker: WorkerProcess, join: object, e2e_settings: AgentSettings
) -> None:
    alice = await join("sales-1", "alice")  # type: ignore[operator]
    assert "listening to everyone" in await alice.greeting()
    bob = await join("sales-1", "bob")  # type: ignore[operator]
    first = await alice.send("hello from alice")
    await alice.reply_containing("alice: hello from alice")
    second = await bob.send("and hello from bob")
    answer = await bob.reply_containing("bob: and hello from bob")
    assert "I have heard alice, bob" in answer
    rooms = worker.status()["rooms"]
    assert [r["room"] for r in rooms] == ["sales-1"]  # one process for both participants
    assert rooms[0]["pid"] and rooms[0]["pss_mb"] > 0
    assert {first, second} <= set(stored_ids_eventually(e2e_settings))


def stored_ids_eventually(settings: AgentSettings) -> list[str]:
    """Messages are acknowledged by Redis; without a flusher here, read them back from the Redis stream."""
    import redis

    from agent.store.keys import Keys

    r = settings.redis
    with redis.Redis(
        unix_socket_path=str(r.unix_socket), password=r.password.get_secret_value() if r.password else None
    ) as client:
        entries = client.xrange(Keys(settings.store.key_prefix).stream)
    import orjson

    return [orjson.loads(fields[b"v"])["id"] for _id, fields in entries if fields.get(b"k") == b"m"]


async def test_three_rooms_three_processes_nothing_crosses(worker: WorkerProcess, join: object) -> None:
    clients = [await join(f"room-{i}", f"user-{i}") for i in range(3)]  # type: ignore[operator]
    await asyncio.gather(*(c.greeting() for c in clients))
    for i, client in enumerate(clients):
        await client.send(f"secret {i}")
    for i, client in enumerate(clients):
        answer = await client.reply_containing(f"secret {i}")
        assert f"I have heard user-{i}." in answer
        assert all(f"secret {j}" not in answer for j in range(3) if j != i)
    wait_until(lambda: len(worker.status()["rooms"]) == 3, 20, "three rooms in the worker's status")
    pids = {r["pid"] for r in worker.status()["rooms"]}
    assert len(pids) == 3
