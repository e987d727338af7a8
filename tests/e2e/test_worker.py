"""The worker against a real livekit-server: one process per room, everyone heard, every message stored."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

import pytest

from agent.settings import AgentSettings
from appliance.chatclient import ChatClient
from harness.livekit import LiveKitServer, is_loopback, logged_candidates
from harness.processes import WorkerProcess
from harness.servers import wait_until

Join = Callable[[str, str], Awaitable[ChatClient]]


async def test_one_process_serves_everyone_in_the_room(
    worker: WorkerProcess, join: Join, e2e_settings: AgentSettings
) -> None:
    alice = await join("sales-1", "alice")
    assert "listening to everyone" in await alice.greeting()
    bob = await join("sales-1", "bob")
    first = await alice.send("hello from alice")
    await alice.reply_containing("alice: hello from alice")
    second = await bob.send("and hello from bob")
    answer = await bob.reply_containing("bob: and hello from bob")
    assert "I have heard alice, bob" in answer
    rooms = worker.status()["rooms"]
    assert [r["room"] for r in rooms] == ["sales-1"]  # one process for both participants
    assert rooms[0]["pid"] and rooms[0]["pss_mb"] > 0
    assert rooms[0]["conversation"]  # the room's current conversation, as the store keyed it
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


async def test_three_rooms_three_processes_nothing_crosses(worker: WorkerProcess, join: Join) -> None:
    clients = [await join(f"room-{i}", f"user-{i}") for i in range(3)]
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


async def test_every_candidate_the_agent_exchanges_is_on_loopback(
    worker: WorkerProcess, join: Join, livekit_server: LiveKitServer
) -> None:
    alice = await join("candid", "alice")
    await alice.greeting()  # the agent's room process has negotiated its own peer connections by now
    await alice.send("are we local?")
    await alice.reply_containing("are we local?")
    found = logged_candidates(livekit_server)  # every candidate signalled in this session, both directions
    assert found
    assert all(is_loopback(address) for address, _proto, _type in found), found


async def test_status_lists_rooms_only_to_the_holder_of_the_token(worker: WorkerProcess, join: Join) -> None:
    """Room names can be personal and loopback is open to every local user: /status asks for its token."""
    alice = await join("private-name", "alice")
    await alice.greeting()
    assert [r["room"] for r in worker.status()["rooms"]] == ["private-name"]
    url = f"http://127.0.0.1:{worker.settings.worker.status_port}/status"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, urllib.request.Request(url, headers=headers), timeout=5)
        assert refused.value.code == 401
        assert b"private-name" not in refused.value.read()
