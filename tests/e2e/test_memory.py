"""Memory limits: a room over its limit is killed alone; the RLIMIT_DATA backstop stops a runaway allocation."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.settings import AgentSettings
from appliance.chatclient import ChatClient
from harness.processes import WorkerProcess

Join = Callable[[str, str], Awaitable[ChatClient]]
LIMIT_MB = 200


def hog_worker(settings: AgentSettings, tmp_path: Path, *, monitor: bool) -> WorkerProcess:
    worker = settings.worker.model_copy(
        update={"agent": "harness.hog_agent:build", "job_memory_limit_mb": LIMIT_MB, "memory_monitor": monitor}
    )
    return WorkerProcess(settings.model_copy(update={"worker": worker}), tmp_path).start()


async def test_a_room_over_its_limit_is_killed_alone_counted_and_revived(
    e2e_settings: AgentSettings, join: Join, tmp_path: Path
) -> None:
    worker = hog_worker(e2e_settings, tmp_path, monitor=True)
    try:
        hog = await join("greedy", "alice")
        calm = await join("calm", "bob")
        await hog.greeting()
        await calm.greeting()
        await hog.send("eat memory")
        await hog.reply_containing("I'm back", 60)  # killed at its limit, dispatched again, resumed
        await calm.send("still there?")
        assert "bob: still there?" in await calm.reply_containing("still there?")
        counters = worker.status()["counters"]
        assert counters["memory_kills"] == 1
        assert counters["redispatches"] == {"memory": 1}
    finally:
        assert worker.terminate() == 0


async def test_the_backstop_stops_a_runaway_allocation_without_the_monitor(
    e2e_settings: AgentSettings, join: Join, tmp_path: Path
) -> None:
    worker = hog_worker(e2e_settings, tmp_path, monitor=False)
    try:
        hog = await join("runaway", "alice")
        await hog.greeting()
        idle = worker.status()["rooms"][0]
        await hog.send("eat memory")
        found = re.search(r"allocation failed after (\d+) MB", await hog.reply_containing("allocation failed", 60))
        assert found
        assert int(found.group(1)) <= LIMIT_MB  # stopped at the cap, not seconds later
        room = worker.status()["rooms"][0]
        assert room["pid"] == idle["pid"]  # nothing killed it: the allocation failed instead
        assert room["uss_mb"] < idle["uss_mb"] + LIMIT_MB + 50
        assert worker.status()["counters"]["crashes"] == {}
    finally:
        assert worker.terminate() == 0
