"""Never two agents in a room, with two workers racing for the same orphaned rooms on one LiveKit and one Redis.

The pools start empty (no idle process) and make each process by `spawn` (as bench/rooms.py's baseline does: a
fresh interpreter imports everything, seconds per process on this box), so the last rooms wait for a process
much longer than a claim lives (dispatch_grace_s = 2 s): a claim that is not renewed while its room waits lets
the other worker, or the same one, dispatch the room a second time. Then the whole of one worker is killed: its
rooms' claims lapse and the other worker takes them over.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from livekit import api
from livekit.protocol import models

from agent.settings import AgentSettings
from appliance.chatclient import ChatClient
from harness.livekit import LiveKitServer
from harness.processes import WorkerProcess
from harness.servers import wait_until
from tests.e2e.conftest import worker_settings
from tests.e2e.test_worker import Join

ROOMS = 8
GRACE_S = 2


async def agents_per_room(livekit: LiveKitServer, rooms: list[str]) -> dict[str, list[str]]:
    async with livekit.api() as lk:
        found = {}
        for room in rooms:
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            found[room] = [p.identity for p in listed.participants if p.kind == models.ParticipantInfo.Kind.AGENT]
    return found


def rounds(worker: WorkerProcess) -> int:
    return int(worker.status()["counters"]["reconcile_rounds"])


def settle(workers: list[WorkerProcess], passes: int) -> None:
    """Each worker's reconciler has looked at every room ``passes`` more times (longer than a claim lives)."""
    for worker, start in [(w, rounds(w)) for w in workers]:
        wait_until(functools.partial(passed, worker, start + passes), 60, f"{passes} reconcile rounds")


def passed(worker: WorkerProcess, target: int) -> bool:
    return rounds(worker) >= target


def greetings(client: ChatClient) -> list[str]:
    """Every reply the client has received so far (no line was sent: each one is an agent's greeting)."""
    out = []
    while not client.replies.empty():
        out.append(client.replies.get_nowait()[1])
    return out


async def test_two_workers_racing_for_orphaned_rooms_give_each_room_one_agent(
    e2e_settings: AgentSettings, livekit_server: LiveKitServer, join: Join, tmp_path: Path
) -> None:
    names = [f"race-{i}" for i in range(ROOMS)]
    # The rooms exist, with a human each, before any worker: orphans for both reconcilers at once.
    clients = [await join(room, f"human-{i}") for i, room in enumerate(names)]

    def racer(tag: str) -> WorkerProcess:
        settings = worker_settings(e2e_settings, livekit_server, num_idle_processes=0, dispatch_grace_s=GRACE_S)
        # Room processes spawned afresh (bench/worker.py's "spawn"): no idle process to warm first.
        return WorkerProcess(settings, tmp_path / tag, module="bench.worker", args=("spawn",))

    workers = [racer("a"), racer("b")]
    for worker in workers:
        worker.spawn()
    try:
        for worker in workers:
            wait_until(worker.registered, 60, "both workers registered")
        heard = await asyncio.gather(*(c.greeting(90) for c in clients))
        assert all("listening to everyone" in text for text in heard), heard
        settle(workers, passes=2 * GRACE_S + 2)
        agents = await agents_per_room(livekit_server, names)
        assert all(len(found) == 1 for found in agents.values()), agents
        assert [greetings(c) for c in clients] == [[] for _ in clients], "a room was greeted twice"

        # SIGKILL of the whole of one worker (its room processes die with it): the other takes its rooms over.
        victim = max(workers, key=lambda w: len(w.rooms()))
        survivor = workers[1 - workers.index(victim)]
        victims_rooms = victim.rooms()
        victim.kill()
        back = [c for c, room in zip(clients, names, strict=True) if room in victims_rooms]
        resumed = await asyncio.gather(*(c.reply_containing("I'm back", 60) for c in back))
        assert len(resumed) == len(victims_rooms)
        settle([survivor], passes=2 * GRACE_S + 2)
        agents = await agents_per_room(livekit_server, names)
        assert all(len(found) == 1 for found in agents.values()), agents
        assert [greetings(c) for c in clients] == [[] for _ in clients], "a room was greeted twice"
        assert survivor.rooms() == set(names)
    finally:
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                assert worker.terminate() == 0, worker.output()[-3000:]
