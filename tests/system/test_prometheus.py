"""A real Prometheus against the running appliance: the bundled one ([metrics] prometheus) scrapes the exporter and
loads the shipped rules; every dashboard panel's and every rule's expression, as written, evaluates on it with sane
values; and the shipped rules (only their `for:` shortened) fire in a private Prometheus when the flusher stops
and when PostgreSQL goes down."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.appliance import InstalledAppliance
from harness.prometheus import PrivatePrometheus, PrometheusAPI
from harness.servers import wait_until
from tests.system.conftest import Join

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "config" / "grafana" / "appliance-dashboard.json"
ROOMS = ("prom-a", "prom-b", "prom-c")


def bundled(appliance: InstalledAppliance) -> PrometheusAPI:
    return PrometheusAPI(f"http://127.0.0.1:{appliance.settings.metrics.prometheus_port}")


def panels() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def rules() -> list[dict[str, str]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_bundled_prometheus_scrapes_the_exporter_with_the_shipped_rules(appliance: InstalledAppliance) -> None:
    prometheus = bundled(appliance)
    wait_until(prometheus.ready, 60, "the bundled Prometheus ready")
    wait_until(lambda: prometheus.values('up{job="appliance"}') == [1.0], 60, "the exporter scraped and up")
    loaded = {rule["name"] for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]}
    assert loaded == {rule["alert"] for rule in rules()}
    assert (appliance.layout.prometheus_dir / "wal").is_dir()  # its data under the appliance's data dir
    assert prometheus.firing() == set()  # a healthy box fires nothing


async def test_every_panel_and_rule_evaluates_with_sane_values(appliance: InstalledAppliance, join: Join) -> None:
    prometheus = bundled(appliance)
    for room in ROOMS:
        client = await join(appliance, room, "ann")
        await client.greeting(60)
        await client.send(f"hello from {room}")
        await client.reply(30)
    wait_until(lambda: prometheus.values("sum(appliance_rooms_active)") == [3.0], 60, "3 rooms in Prometheus")
    wait_until(lambda: prometheus.values("sum(appliance_room_participants)") == [3.0], 60, "3 participants")
    # rate() and increase() need two samples of a series in their window.
    wait_until(lambda: all(prometheus.query(expr) for _, expr in panels()), 60, "every panel's query non-empty")

    for title, expr in panels():
        values = prometheus.values(expr)
        assert values, (title, expr)
        if not expr.startswith("histogram_quantile"):
            assert all(math.isfinite(v) and v >= 0 for v in values), (title, expr, values)
    latency = prometheus.values(
        "histogram_quantile(0.5, sum by (le) (rate(appliance_room_greeting_seconds_bucket[5m])))"
    )
    assert 0 < latency[0] < 30, latency  # a greeting takes a fraction of a second to seconds
    assert prometheus.values("appliance_health") == [0.0]
    free = prometheus.values("appliance_box_disk_free_bytes / appliance_box_disk_size_bytes")
    assert 0 < free[0] < 1

    for rule in rules():
        assert prometheus.query(rule["expr"]) == [], f"{rule['alert']} fires on a healthy box"
        for name in set(re.findall(r"\bappliance_\w+", rule["expr"])):
            assert prometheus.query(name), f"{rule['alert']}: {name} not in Prometheus"


@pytest.fixture
def private_prometheus(appliance: InstalledAppliance) -> Iterator[PrivatePrometheus]:
    """The shipped rules with only their `for:` shortened, scraping the appliance's exporter every second."""
    shortened = re.sub(r"^(\s+for:) \S+$", r"\1 3s", RULES.read_text(), flags=re.MULTILINE)
    prometheus = PrivatePrometheus(f"127.0.0.1:{appliance.settings.metrics.port}", shortened)
    try:
        wait_until(lambda: prometheus.values('up{job="appliance"}') == [1.0], 30, "the exporter scraped")
        # Before the first scrape the absent() rules hold: wait until they no longer do.
        wait_until(lambda: prometheus.firing() == set(), 30, "nothing firing on a healthy box", interval=0.5)
        yield prometheus
    finally:
        prometheus.close()


@pytest.mark.parametrize(("program", "alert"), [("flusher", "ApplianceFlusherSilent"),
                                                 ("postgres", "AppliancePostgresDown")])  # fmt: skip
def test_a_stopped_part_fires_its_alert(
    appliance: InstalledAppliance, private_prometheus: PrivatePrometheus, program: str, alert: str
) -> None:
    supervisor = appliance.supervisor()
    assert supervisor.stop(program, timeout_s=60)
    try:
        wait_until(lambda: alert in private_prometheus.firing(), 90, f"{alert} firing", interval=0.5)
    finally:
        supervisor.start(program)
    wait_until(lambda: alert not in private_prometheus.firing(), 90, f"{alert} resolved", interval=0.5)
