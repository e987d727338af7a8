"""The worker's own lifecycle: drain on SIGTERM, exit when LiveKit is unreachable, the limits of re-dispatch."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import orjson
import pytest

from agent.settings import AgentSettings, LiveKitSettings
from agent.store.keys import Keys
from appliance.chatclient import ChatClient, Refused
from harness.inspect import backlog, conversation_status, stored_ids
from harness.livekit import LiveKitServer
from harness.processes import FlusherProcess, WorkerProcess
from harness.servers import RedisServer, free_port, wait_until

Join = Callable[[str, str], Awaitable[ChatClient]]


async def test_sigterm_drains_active_rooms_refuses_new_ones_and_flushes_everything(
    worker: WorkerProcess, join: Join, e2e_settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    flusher = FlusherProcess(e2e_settings, tmp_path / "flusher").start()
    alice = await join("closing-time", "alice")
    await alice.greeting()
    sent = [await alice.send("before the drain")]
    await alice.reply_containing("before the drain")
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: worker.status()["draining"], 10, "the worker draining")
    late = await join("too-late", "bob")
    with pytest.raises(TimeoutError):
        await late.greeting(5)  # no agent for a room created while draining
    sent.append(await alice.send("during the drain"))  # the active room goes on
    await alice.reply_containing("during the drain")
    await alice.aclose()  # the room ends after the departure timeout; then the worker exits
    assert worker.proc.wait(60) == 0
    wait_until(lambda: backlog(redis_server.client(), e2e_settings) == 0, 30, "the stream drained")
    assert flusher.terminate() == 0
    stored = set(stored_ids(e2e_settings))
    assert set(sent) <= stored
    assert len(stored) == 5  # greeting, two lines, two answers: the agent's side is stored too


async def test_worker_exits_non_zero_when_livekit_stays_unreachable(
    e2e_settings: AgentSettings, tmp_path: Path
) -> None:
    nowhere = LiveKitSettings(url=f"ws://127.0.0.1:{free_port()}", api_key="k", api_secret="s" * 32)
    settings = e2e_settings.model_copy(
        update={"livekit": nowhere, "worker": e2e_settings.worker.model_copy(update={"connect_retries": 1})}
    )
    process = WorkerProcess(settings, tmp_path).start(registered=False)
    assert process.proc is not None
    assert process.proc.wait(60) == 1
    assert "failed to connect to livekit" in process.output()


async def test_a_room_whose_agent_keeps_dying_is_given_up(
    livekit_server: LiveKitServer, e2e_settings: AgentSettings, join: Join, tmp_path: Path
) -> None:
    settings = e2e_settings.model_copy(update={"worker": e2e_settings.worker.model_copy(update={"max_deaths": 2})})
    worker = WorkerProcess(settings, tmp_path).start()
    try:
        alice = await join("cursed", "alice")
        await alice.greeting()
        os.kill(room_pid(worker, "cursed"), signal.SIGKILL)
        await alice.reply_containing("I'm back", 60)  # first death: dispatched again
        os.kill(room_pid(worker, "cursed"), signal.SIGKILL)
        with pytest.raises(TimeoutError):
            await alice.reply(8)  # second death within the window: left alone
        counters = worker.status()["counters"]
        assert counters["crashes"] == {"killed": 2}
        assert counters["redispatches"] == {"killed": 1}
        assert counters["given_up"] == 1
        assert counters["reconciled"] == 0  # the reconciler respects it too
        # and the room was told each time: what the web console and `appliance chat` show
        assert [(t["state"], t["cause"]) for t in alice.told] == [("redispatching", "killed"), ("given_up", "killed")]
    finally:
        assert worker.terminate() == 0


async def test_never_two_agents_in_one_room(
    worker: WorkerProcess, join: Join, livekit_server: LiveKitServer, e2e_settings: AgentSettings
) -> None:
    from livekit import api

    from agent.redispatch import Redispatcher
    from agent.store.keys import digest
    from agent.store.redis_tier import make_client

    alice = await join("crowded", "alice")
    await alice.greeting()
    async with livekit_server.api() as lkapi:
        redis = make_client(e2e_settings.redis)
        try:
            # The worker claimed the room when it accepted the job: no worker dispatches it while its agent joins.
            lock = f"{e2e_settings.store.key_prefix}dispatch:{digest('crowded')}"
            assert await redis.get(lock) is not None  # (as the worker's Redis user, which may GET, not TTL)
            # Two other "workers" try to dispatch the room at once, while its agent is in it.
            others = [Redispatcher(lkapi, redis, e2e_settings.worker, e2e_settings.store.key_prefix) for _ in range(2)]
            assert await asyncio.gather(*(o.dispatch("crowded") for o in others)) == [False, False]
            # Its agent dies: the worker and both others race to revive it; only one may win.
            os.kill(room_pid(worker, "crowded"), signal.SIGKILL)
            wins = await asyncio.gather(*(o.dispatch("crowded", dead="") for o in others))
            await alice.reply_containing("I'm back", 60)
            await asyncio.sleep(3)  # time for a second agent to arrive, if one were dispatched
            listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room="crowded"))
            agents = [p.identity for p in listed.participants if p.kind == api.ParticipantInfo.Kind.AGENT]
            assert len(agents) == 1, agents
            assert sum(wins) + sum(worker.status()["counters"]["redispatches"].values()) <= 1
        finally:
            await redis.aclose()


def room_pid(worker: WorkerProcess, room: str) -> int:
    wait_until(lambda: any(r["room"] == room for r in worker.status()["rooms"]), 30, f"a process for {room}")
    return int(next(r["pid"] for r in worker.status()["rooms"] if r["room"] == room))


async def test_an_agent_that_fails_to_start_counts_as_a_crash(
    e2e_settings: AgentSettings, join: Join, tmp_path: Path
) -> None:
    worker_settings = e2e_settings.worker.model_copy(update={"agent": "harness.crashing_agent:build", "max_deaths": 2})
    worker = WorkerProcess(e2e_settings.model_copy(update={"worker": worker_settings}), tmp_path).start()
    try:
        await join("doomed", "alice")
        wait_until(lambda: worker.status()["counters"]["given_up"] == 1, 60, "the room given up after 2 crashes")
        counters = worker.status()["counters"]
        assert counters["crashes"] == {"exit": 2}
        assert counters["redispatches"] == {"exit": 1}
        assert "this agent cannot start" in worker.output()
    finally:
        assert worker.terminate() == 0


async def test_a_room_still_active_at_the_drain_timeout_is_interrupted_then_resumed(
    e2e_settings: AgentSettings, join: Join, tmp_path: Path
) -> None:
    settings = e2e_settings.model_copy(update={"worker": e2e_settings.worker.model_copy(update={"drain_timeout_s": 3})})
    first = WorkerProcess(settings, tmp_path / "first").start()
    alice = await join("long-call", "alice")
    await alice.greeting()
    await alice.send("please remember this")
    await alice.reply_containing("please remember this")
    conversation = first.status()["rooms"][0]["conversation"]
    assert first.terminate(timeout=60) == 0  # alice stays: the drain times out
    assert conversation_status(e2e_settings, conversation) == "interrupted"
    second = WorkerProcess(settings, tmp_path / "second").start()
    try:
        assert "I remember our conversation" in await alice.reply_containing("I'm back", 60)
        await alice.send("still there?")
        answer = await alice.reply_containing("still there?")
        assert "holds 5 messages" in answer  # greeting, line, answer, resume greeting, this line
        assert second.status()["rooms"][0]["conversation"] == conversation
    finally:
        assert second.terminate() == 0


async def test_a_line_the_store_refuses_is_refused_to_its_sender_stored_nowhere_and_not_answered(
    worker: WorkerProcess, join: Join, e2e_settings: AgentSettings, redis_server: RedisServer
) -> None:
    alice = await join("bad-input", "alice")
    await alice.greeting()
    with pytest.raises(Refused, match=r"^content: contains NUL \(\\x00\) at offset 3, which PostgreSQL cannot store$"):
        await alice.send("nul\x00here")
    with pytest.raises(Refused, match=r"^content: \d+ bytes exceeds the maximum of \d+$"):
        await alice.send("x" * (e2e_settings.store.max_content_bytes + 1))
    await alice.send("a good line")
    answer = await alice.reply()  # the next reply answers this line: none was generated for the refused ones
    assert "alice: a good line" in answer and "holds 2 messages" in answer  # the greeting and this line
    wait_until(lambda: len(stream_contents(redis_server, e2e_settings)) == 3, 10, "the answer stored")
    assert stream_contents(redis_server, e2e_settings)[:2] == [e2e_settings.worker.greeting, "a good line"]
    assert stored_ids(e2e_settings) == []  # nor went around Redis to PostgreSQL


def stream_contents(redis_server: RedisServer, settings: AgentSettings) -> list[str]:
    """The content of every message in the write-ahead stream (no flusher runs here), in order."""
    stream = Keys(settings.store.key_prefix).stream
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", redis_server.client().xrange(stream))
    return [orjson.loads(fields[b"v"])["t"] for _id, fields in entries if fields.get(b"k") == b"m"]
