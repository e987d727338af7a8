"""The exporter and the health endpoint of the installed appliance (the program "metrics"): what a scrape shows
matches `appliance status` and the rooms open, /health turns 503 when PostgreSQL is gone and 200 when it is back,
and a scraper holding a keep-alive connection does not hold up the program's stop."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from harness.appliance import InstalledAppliance
from harness.servers import wait_until
from tests.system.conftest import Join


def scrape(appliance: InstalledAppliance) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{appliance.settings.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


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
    found = scrape(appliance)
    assert found[("appliance_health", ())] == 0
    assert found[("appliance_redis_up", ())] == found[("appliance_postgres_up", ())] == 1
    assert found[("appliance_redis_maxmemory_bytes", ())] == 2048 * 2**20
    assert found[("appliance_flusher_up", ())] == 1
    assert found[("appliance_program_up", (("program", "metrics"),))] == 1
    assert sum(v for (name, _), v in found.items() if name == "appliance_worker_registered") == 1
    assert sum(v for (name, _), v in found.items() if name == "appliance_rooms_pss_bytes") > 0


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
