"""`appliance restart` is graceful: a second worker registers first, then the old one drains; every room keeps an
agent, a room joined meanwhile gets one, and a room still open at the drain timeout resumes. Without names it
restarts the flusher and the worker only: livekit, Redis and PostgreSQL keep running, so nobody is dropped."""

from __future__ import annotations

import asyncio
import re

from appliance.probes import probe_worker
from appliance.service import running_worker
from harness.appliance import InstalledAppliance
from harness.servers import wait_until
from tests.system.conftest import Join


def held(answer: str) -> int:
    found = re.search(r"holds (\d+) messages", answer)
    assert found, answer
    return int(found.group(1))


async def test_graceful_restart_keeps_every_room_served(appliance: InstalledAppliance, join: Join) -> None:
    settings = appliance.settings
    sup = appliance.supervisor()
    old = running_worker(sup)
    assert old is not None
    alice = await join(appliance, "restart-room", "alice")
    await alice.greeting()
    await alice.send("before the restart")
    await alice.reply_containing("alice: before the restart")

    pids = {p.name: p.pid for p in sup.processes()}
    restart = await asyncio.create_subprocess_exec(
        str(appliance.venv / "bin" / "appliance"),
        "restart",
        env=appliance.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    new = "worker-alt" if old == "worker" else "worker"

    def old_draining() -> bool:
        return probe_worker(settings, old).draining

    await asyncio.to_thread(wait_until, old_draining, 120, f"{old} draining")
    # The new worker registered before the old one began to drain; the room's agent goes on meanwhile.
    assert probe_worker(settings, new).registered
    await alice.send("during the drain")
    await alice.reply_containing("alice: during the drain")
    bob = await join(appliance, "joined-during-restart", "bob")
    await bob.greeting()
    await bob.send("hello new worker")
    await bob.reply_containing("bob: hello new worker")

    _, stderr = await asyncio.wait_for(restart.communicate(), 180)
    assert restart.returncode == 0, stderr.decode()
    assert "restarted flusher, worker" in stderr.decode()
    assert running_worker(sup) == new
    after = {p.name: p.pid for p in sup.processes()}
    for store in ("redis", "postgres", "livekit"):
        assert after[store] == pids[store], f"{store} was restarted"
    assert after["flusher"] != pids["flusher"]
    assert sup.process(old).state == "STOPPED"
    # The old worker drained for its timeout and closed alice's room; the new worker resumed the conversation.
    await alice.reply_containing("I'm back", 60)
    await alice.send("after the restart")
    answer = await alice.reply_containing("alice: after the restart")
    # greeting, (line, answer) x 2, the resume greeting, this line: nothing acknowledged was lost
    assert held(answer) == 7, answer
