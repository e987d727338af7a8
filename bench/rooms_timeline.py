"""Where join -> greeting and kill -> "I'm back" go, step by step: the clients' stamps joined with the lines each
room process wrote (bench/rooms_agent.py: livekit's dispatch stamps and the moment the session was built)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.settings import AgentSettings
from agent.store.store import ConversationStore
from bench.rooms_load import Room
from bench.rooms_report import Latency

Stamps = dict[str, float]
# (name, from, to): the step's duration is stamp[to] - stamp[from]; client stamps and process stamps share a clock.
# The client's "agent" stamp is left out: the agent's arrival reaches the client after the agent has already
# opened its conversation, so it would order the steps wrongly.
GREETING_STEPS = [
    ("join -> job request at the worker", "join", "received"),
    ("  -> job accepted by the worker", "received", "accepted"),
    ("  -> job assigned by livekit-server", "accepted", "assigned"),
    ("  -> a process from the pool has it", "assigned", "launched"),
    ("  -> in the room, conversation opened", "launched", "session"),
    ("  -> greeting received", "session", "greeting"),
]
RESUME_STEPS = [
    ("kill -9 -> job request at the worker", "killed", "received"),
    ("  -> a process from the pool has it", "received", "launched"),
    ("  -> agent back, conversation resumed", "launched", "session"),
    ('  -> "I\'m back" received', "session", "back"),
]


def read_timeline(path: Path) -> dict[str, list[Stamps]]:
    """Each room's lines, in the order its processes wrote them."""
    lines: dict[str, list[Stamps]] = defaultdict(list)
    if not path.exists():
        return lines
    for text in path.read_text().splitlines():
        record: dict[str, Any] = json.loads(text)
        lines[str(record.pop("room"))].append({k: float(v) for k, v in record.items()})
    return lines


def steps(rooms: list[Room], timeline: dict[str, list[Stamps]]) -> list[tuple[str, Latency]]:
    """Greeting steps of every greeted room (its first process), then resume steps of every killed room (the
    first process dispatched after the kill)."""
    first = [room.stamps | timeline[room.name][0] for room in rooms if room.greeted and timeline.get(room.name)]
    revived = []
    for room in rooms:
        killed = room.stamps.get("killed")
        after = [line for line in timeline.get(room.name, []) if killed and line["received"] >= killed]
        if "back" in room.stamps and after:
            revived.append(room.stamps | after[0])
    return durations(GREETING_STEPS, first) + durations(RESUME_STEPS, revived)


def dispatched_twice(rooms: list[Room], timeline: dict[str, list[Stamps]]) -> int:
    """Rooms that got a second agent process while their first was alive (before any kill): two agents in one
    room, each answering every line."""
    count = 0
    for room in rooms:
        killed = room.stamps.get("killed", float("inf"))
        count += sum(line["received"] < killed for line in timeline.get(room.name, [])) > 1
    return count


def unserved(rooms: list[Room], timeline: dict[str, list[Stamps]], worker_log: str) -> list[str]:
    """Why the rooms that were never greeted went unserved, one phrase per cause with its count: memory (a
    process killed over the limit), timeout (the agent came after the greeting's wait: the box could not make
    processes fast enough), cpu (no process of the pool had the room's job at all before the run ended)."""
    memory, cpu, late = 0, 0, []
    for room in rooms:
        if room.greeted:
            continue
        lines = timeline.get(room.name, [])
        died = f"room {room.name}: its process"
        if any(died in line and "(memory" in line for line in worker_log.splitlines()):
            memory += 1
        elif lines and room.stamps.get("join"):
            late.append(lines[0]["session"] - room.stamps["join"])
        else:
            cpu += 1
    causes = []
    if memory:
        causes.append(f"{memory} memory (its process was killed over the limit)")
    if late:
        causes.append(
            f"{len(late)} timeout (the agent came {min(late):.0f}-{max(late):.0f} s after the join, past the wait:"
            " the pool made processes too slowly for the CPU)"
        )
    if cpu:
        causes.append(f"{cpu} cpu (no process of the pool had its job before the run ended)")
    return causes


async def cold_open(settings: AgentSettings, name: str, rounds: int = 10) -> Latency:
    """What a room's process does after joining, before its session starts, timed in this process: a new
    ConversationStore (Redis client, PostgreSQL pool) started, and a conversation opened."""
    seconds = []
    for i in range(rounds):
        t0 = time.perf_counter()
        store = ConversationStore(settings)
        await store.start()
        await store.open(f"{name}-{i}")
        seconds.append(time.perf_counter() - t0)
        await store.aclose()
    return Latency.of(seconds)


def durations(named: list[tuple[str, str, str]], merged: list[Stamps]) -> list[tuple[str, Latency]]:
    def between(start: str, end: str) -> Callable[[Stamps], float | None]:
        return lambda s: s[end] - s[start] if s.get(start) and s.get(end) else None

    out = []
    for name, start, end in named:
        values = [v for v in map(between(start, end), merged) if v is not None]
        if values:
            out.append((name, Latency.of(values)))
    return out
