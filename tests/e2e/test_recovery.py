"""Rooms survive their process dying, and the worker dying: re-dispatch, reconcile, resume."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Awaitable, Callable

import psutil

from agent.settings import AgentSettings
from appliance.chatclient import ChatClient
from harness.inspect import conversation_status, recent_count
from harness.livekit import LiveKitServer
from harness.processes import WorkerProcess
from harness.servers import RedisServer, wait_until

Join = Callable[[str, str], Awaitable[ChatClient]]


def held(answer: str) -> int:
    """How many messages the offline model says its context holds."""
    found = re.search(r"holds (\d+) messages", answer)
    assert found, answer
    return int(found.group(1))


def room_pid(worker: WorkerProcess, room: str) -> int:
    pids = [r["pid"] for r in worker.status()["rooms"] if r["room"] == room]
    assert len(pids) == 1, worker.status()
    return int(pids[0])


async def test_kill_9_of_a_room_process_resumes_the_whole_conversation(
    worker: WorkerProcess, join: Join, redis_server: RedisServer
) -> None:
    alice = await join("crash-room", "alice")
    await alice.greeting()
    acked = []
    for i in range(3):
        acked.append(await alice.send(f"line {i}"))
        await alice.reply_containing(f"alice: line {i}")
    # The agent stores its answer once said (a kill in between loses that answer, never an acknowledged line):
    # the kill comes once the store holds all seven.
    conversation = next(r["conversation"] for r in worker.status()["rooms"] if r["room"] == "crash-room")
    assert conversation, worker.status()

    def stored() -> int:
        return recent_count(redis_server.client(), worker.settings, conversation)

    wait_until(lambda: stored() == 7, 10, "the answers stored")
    before = room_pid(worker, "crash-room")
    os.kill(before, signal.SIGKILL)
    assert "I remember our conversation" in await alice.reply_containing("I'm back", 60)
    # the room was told at once, by the server (LiveKit says that a participant left seconds later)
    assert [(t["state"], t["cause"]) for t in alice.told] == [("redispatching", "killed")], alice.told
    assert alice.told[0]["agent"].startswith("agent-AJ_")
    acked.append(await alice.send("after the crash"))
    answer = await alice.reply_containing("after the crash")
    # greeting + 3 x (line, answer) + the resume greeting + this line: nothing acknowledged was lost
    assert held(answer) == 9
    wait_until(lambda: room_pid(worker, "crash-room") != before, 10, "a new process for the room")
    counters = worker.status()["counters"]
    assert counters["crashes"] == {"killed": 1}
    assert counters["redispatches"] == {"killed": 1}


async def test_last_participant_leaving_ends_the_room_and_its_conversation(
    worker: WorkerProcess, join: Join, e2e_settings: AgentSettings
) -> None:
    alice = await join("short-visit", "alice")
    await alice.greeting()
    await alice.send("hello and goodbye")
    await alice.reply_containing("hello and goodbye")
    pid = room_pid(worker, "short-visit")
    await alice.aclose()
    wait_until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        30,
        "the room's process gone after the departure timeout",
    )
    wait_until(lambda: not worker.status()["rooms"], 10, "no room in the worker's status")
    statuses = conversations_of(e2e_settings, "short-visit")
    assert statuses == ["ended"]
    assert worker.status()["counters"]["crashes"] == {}


def conversations_of(settings: AgentSettings, room: str) -> list[str]:
    from harness.inspect import connect

    with connect(settings) as conn:
        rows = conn.execute("SELECT id FROM conversations WHERE room = %s", (room,)).fetchall()
    return [str(conversation_status(settings, str(r[0]))) for r in rows]


async def test_leaving_and_rejoining_within_the_departure_timeout_keeps_the_process(
    worker: WorkerProcess, join: Join
) -> None:
    alice = await join("revolving-door", "alice")
    await alice.greeting()
    await alice.send("first visit")
    first = held(await alice.reply_containing("first visit"))
    pid = room_pid(worker, "revolving-door")
    await alice.aclose()
    again = await join("revolving-door", "alice")
    await again.send("second visit")
    answer = await again.reply_containing("second visit")
    assert held(answer) == first + 2  # same context: the first visit's lines are there
    assert room_pid(worker, "revolving-door") == pid


async def test_kill_9_of_the_worker_then_restart_gives_every_room_an_agent(
    worker: WorkerProcess, join: Join, livekit_server: LiveKitServer
) -> None:
    alice = await join("survivor", "alice")
    await alice.greeting()
    await alice.send("before the worker died")
    await alice.reply_containing("before the worker died")
    family = worker.descendants()
    assert family  # the forkserver and the room processes
    worker.kill()
    wait_until(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family),
        20,
        "the forkserver and room processes gone with the worker",
    )
    bob = await join("born-while-down", "bob")  # created while no worker is registered
    worker.start()
    assert "I remember our conversation" in await alice.reply_containing("I'm back", 60)
    assert "listening to everyone" in await bob.greeting(60)
    await bob.send("anyone there?")
    await bob.reply_containing("anyone there?")
    assert await agents_in(livekit_server, "survivor") == 1
    assert await agents_in(livekit_server, "born-while-down") == 1
    # The survivor's agent can only come from the reconciler (LiveKit never dispatches a room again); the newborn
    # room's from the reconciler, or from LiveKit itself if it still held the room's job when the worker registered.
    assert worker.status()["counters"]["reconciled"] in (1, 2)


async def agents_in(livekit_server: LiveKitServer, room: str) -> int:
    from livekit import api

    async with livekit_server.api() as lkapi:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return sum(p.kind == api.ParticipantInfo.Kind.AGENT for p in listed.participants)
