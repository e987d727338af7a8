"""`appliance capacity` measuring what a room costs on a running appliance: the PSS of its open rooms and the CPU
their processes use; with no room open it says to give the figures."""

from __future__ import annotations

import json

from harness.appliance import InstalledAppliance
from harness.servers import wait_until
from tests.system.conftest import Join
from tests.system.test_status import status


async def test_capacity_measures_the_rooms_open_here(appliance: InstalledAppliance, join: Join) -> None:
    for room in ("size-a", "size-b"):
        client = await join(appliance, room, "ann")
        await client.greeting(60)
    _, report = status(appliance)
    open_here = [r for w in report["workers"] for r in w["rooms"]]
    done = appliance.run("capacity", "--json", "--sample-s", "2")
    figures = json.loads(done.stdout)
    room = figures["room"]
    assert f"{len(open_here)} rooms open on this box" in room["measured"], room
    pss = sorted(r["pss_mb"] for r in open_here)
    assert pss[0] * 0.9 <= room["pss_mb"] <= pss[-1] * 1.1, (room, pss)
    assert 0 <= room["cpu_cores"] < 1 and room["worker_mb"] > 0
    small = figures["boxes"][0]
    assert small["by_memory"] == int((16 * 1024 - 2048 - room["worker_mb"]) / room["pss_mb"])
    assert small["rooms"] > 0


def test_capacity_without_rooms_asks_for_the_figures(appliance: InstalledAppliance) -> None:
    wait_until(lambda: not any(w["rooms"] for w in status(appliance)[1]["workers"]), 60, "every room closed")
    done = appliance.run("capacity", check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: no room is open to measure: give --pss-mb (and --cpu-per-room), e.g. bench.rooms' figures"
    ], done.stderr
