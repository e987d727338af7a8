"""The exporter and the health endpoint of the installed appliance (the program "metrics"): what a scrape shows
matches `appliance status` and the rooms open, the room processes' histograms are there (a killed one's counts
too), /health turns 503 when PostgreSQL is gone and 200 when it is back, and a scraper holding a keep-alive
connection does not hold up the program's stop."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from harness.appliance import InstalledAppliance
from harness.servers import wait_until
from tests.system.conftest import Join
from tests.system.test_status import status


def scrape(appliance: InstalledAppliance) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{appliance.settings.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """A series summed over every label but those given."""
    return sum(v for (n, ls), v in found.items() if n == name and labels.items() <= dict(ls).items())


def health(appliance: InstalledAppliance) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{appliance.settings.metrics.health_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_a_scrape_shows_the_rooms_open_and_the_stores(appliance: InstalledAppliance, join: Join) -> None:
    wait_until(lambda: health(appliance)[0] == 200, 60, "the health endpoint to answer 200")
    for room in ("metrics-a", "metrics-b"):
        client = await join(appliance, room, "ann")
        await client.greeting(60)

    def rooms() -> float:
        found = scrape(appliance)
        return sum(v for (name, _), v in found.items() if name == "appliance_rooms_active")

    wait_until(lambda: rooms() == 2, 30, "two active rooms in the scrape")
    await client.send("how are you")
    await client.reply(30)
    wait_until(lambda: total(scrape(appliance), "appliance_room_reply_seconds_count") >= 1, 30, "the reply timed")
    found = scrape(appliance)
    # What the room processes recorded: two greetings, a reply, each line stored through Redis.
    assert total(found, "appliance_room_greeting_seconds_count", program="worker") >= 2
    assert total(found, "appliance_store_append_seconds_count", tier="redis") >= 2  # the line and the reply
    assert total(found, "appliance_flusher_flush_lag_seconds_count", program="flusher") >= 1
    assert total(found, "appliance_room_starts_total") >= 2
    assert ("lk_agents_worker_load", (("nodename", os.uname().nodename), ("pid", str(worker_pid(appliance))),
                                      ("program", "worker"))) in found  # fmt: skip
    shown = appliance.run("status", check=False).stdout
    assert "latency since each program started" in shown and "\nreply " in shown, shown
    assert found[("appliance_health", ())] == 0
    assert found[("appliance_redis_up", ())] == found[("appliance_postgres_up", ())] == 1
    assert found[("appliance_redis_maxmemory_bytes", ())] == 2048 * 2**20
    assert found[("appliance_flusher_up", ())] == 1
    assert found[("appliance_program_up", (("program", "metrics"),))] == 1
    assert sum(v for (name, _), v in found.items() if name == "appliance_worker_registered") == 1
    assert sum(v for (name, _), v in found.items() if name == "appliance_rooms_pss_bytes") > 0


def worker_pid(appliance: InstalledAppliance) -> int:
    _, report = status(appliance)
    return next(int(p["pid"]) for p in report["programs"] if p["name"] == "worker")


async def test_a_killed_room_process_keeps_its_counts(appliance: InstalledAppliance, join: Join) -> None:
    client = await join(appliance, "metrics-killed", "ann")
    await client.greeting(60)
    await client.send("remember this")
    await client.reply(30)
    _, report = status(appliance)
    pid = next(r["pid"] for w in report["workers"] for r in w["rooms"] if r["room"] == "metrics-killed")
    figures = appliance.layout.figures_dir("worker")
    wait_until(lambda: (figures / f"histogram_{pid}.db").exists(), 10, "the room process's own figures file")
    before = scrape(appliance)
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: (
            total(scrape(appliance), "appliance_room_crashes_total", cause="killed")
            > total(before, "appliance_room_crashes_total", cause="killed")
        ),
        60,
        "the crash counted",
    )
    after = scrape(appliance)  # this scrape folded the dead process's files into the archive
    assert not (figures / f"histogram_{pid}.db").exists() and (figures / "histogram_archive.db").exists()
    for name in ("appliance_room_reply_seconds_count", "appliance_store_append_seconds_count"):
        assert total(after, name) >= total(before, name) >= 1, name


def test_health_is_503_while_postgresql_is_down(appliance: InstalledAppliance) -> None:
    supervisor = appliance.supervisor()
    assert supervisor.stop("postgres", timeout_s=60)
    try:
        wait_until(lambda: health(appliance)[0] == 503, 30, "/health to say 503")
        _, body = health(appliance)
        reasons = body["unserviceable"]
        assert isinstance(reasons, list) and any(str(r).startswith("postgres:") for r in reasons), body
    finally:
        supervisor.start("postgres")
    wait_until(lambda: health(appliance)[0] == 200, 60, "/health to say 200 again")


def test_a_keep_alive_scraper_does_not_hold_up_the_stop(appliance: InstalledAppliance) -> None:
    port = appliance.settings.metrics.port
    scraper = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    scraper.request("GET", "/metrics", headers={"Connection": "keep-alive"})
    assert scraper.getresponse().read()  # answered; the connection stays open
    supervisor = appliance.supervisor()
    started = time.monotonic()
    try:
        assert supervisor.stop("metrics", timeout_s=30)
        took = time.monotonic() - started
        # supervisord would KILL it at stopwaitsecs (10 s, appliance/programs.py): it left on TERM well before.
        assert took < 5, f"the stop took {took:.1f} s with a scraper's connection open"
    finally:
        scraper.close()
        supervisor.start("metrics")
    wait_until(lambda: health(appliance)[0] == 200, 60, "the exporter back")
