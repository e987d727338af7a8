"""The exporter and the health endpoint: ``python -m appliance.metrics``, the supervised program "metrics".

Each scrape asks the same probes and verdict as ``appliance status`` (appliance.status.collect) and the box's own
figures (psutil), and turns them into Prometheus series: nothing is kept between scrapes, so the series of an ended
room or a stopped program are gone with it. Beside them go the histograms and counters the worker's room processes
and the flusher record in files (appliance/recorded.py), livekit-agents' own lk_agents_* among them. /health
answers the verdict: 200 when healthy or degraded (the verdict in the body), 503 otherwise. Both listen on their
own address ([metrics] bind/port, health_bind/health_port).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from appliance import recorded, status
from appliance.layout import Layout
from appliance.serving import run_program, serve_until_signal

if TYPE_CHECKING:
    from appliance.settings import ApplianceSettings

log = logging.getLogger("appliance.metrics")
MB = 2**20
CRASH_CAUSES = ("memory", "killed", "exit")  # agent.worker.exit_cause's


def families(report: status.Report, *, room_names: bool, data_dir: Path) -> Iterator[Metric]:
    """The series of one status report, and of the box (its data disk: the one holding ``data_dir``)."""
    verdict = "`appliance status`'s exit code: 0 healthy, 1 degraded, 3 not running, 4 unknown"
    yield from _one(GaugeMetricFamily, "appliance_health", verdict, report.exit_code)

    up = GaugeMetricFamily("appliance_program_up", "1 when the supervised program runs", labels=["program"])
    restarts = CounterMetricFamily(
        "appliance_program_restarts", "Automatic restarts since supervisord started", labels=["program"]
    )
    crash_loop = GaugeMetricFamily(
        "appliance_program_crash_loop", "1 when the program is crash-looping", labels=["program"]
    )
    pss = GaugeMetricFamily(
        "appliance_program_pss_bytes", "PSS of the program and its descendants (a worker's rooms)", labels=["program"]
    )
    state = GaugeMetricFamily(
        "appliance_program_state", "1 for the program's supervisord state (RUNNING, BACKOFF, FATAL, ...)",
        labels=["program", "state"],
    )  # fmt: skip
    for program in report.programs:
        up.add_metric([program.name], program.state == "RUNNING")
        state.add_metric([program.name, program.state], 1)
        crash_loop.add_metric([program.name], program.crash_loop)
        if program.restarts is not None:
            restarts.add_metric([program.name], program.restarts)
        if program.pss_mb is not None:
            pss.add_metric([program.name], program.pss_mb * MB)
    yield from (up, state, restarts, crash_loop, pss)

    yield from _worker_families(report, room_names=room_names)
    yield from _store_families(report)
    yield from _box_families(data_dir)


def _worker_families(report: status.Report, *, room_names: bool) -> Iterator[Metric]:
    labels = ["worker"]
    registered = GaugeMetricFamily(
        "appliance_worker_registered", "1 when the worker is registered with LiveKit", labels=labels
    )
    draining = GaugeMetricFamily("appliance_worker_draining", "1 while the worker drains", labels=labels)
    rooms = GaugeMetricFamily("appliance_rooms_active", "Rooms with a process of this box", labels=labels)
    starts = CounterMetricFamily("appliance_room_starts", "Room processes given a room", labels=labels)
    crashes = CounterMetricFamily(
        "appliance_room_crashes", "Room processes that died, by cause (memory: killed over its limit)",
        labels=["worker", "cause"],
    )  # fmt: skip
    redispatches = CounterMetricFamily(
        "appliance_room_redispatches",
        "Rooms dispatched again, by cause: their process died (memory, killed, exit) or the room was found without"
        " its agent (orphan)",
        labels=["worker", "cause"],
    )
    give_ups = CounterMetricFamily(
        "appliance_room_give_ups", "Rooms not dispatched again: their agent died too often", labels=labels
    )
    room_labels = ["worker", "room"] if room_names else ["worker"]
    memory = {
        kind: GaugeMetricFamily(
            f"appliance_room_{kind}_bytes" if room_names else f"appliance_rooms_{kind}_bytes",
            f"{kind.upper()} of each room's process" if room_names else f"{kind.upper()} of every room process, summed",
            labels=room_labels,
        )
        for kind in ("pss", "uss")
    }
    largest = GaugeMetricFamily("appliance_room_pss_max_bytes", "PSS of the largest room process", labels=labels)
    for worker in report.workers:
        if not worker.ok:
            continue
        name, counters = worker.program, worker.counters
        registered.add_metric([name], worker.registered)
        draining.add_metric([name], worker.draining)
        rooms.add_metric([name], len(worker.rooms))
        starts.add_metric([name], counters.get("started", 0))
        give_ups.add_metric([name], counters.get("given_up", 0))
        # Every cause from 0, before it first happens: rates and alerts start at 0.
        died, again = counters.get("crashes") or {}, counters.get("redispatches") or {}
        for cause in sorted(set(CRASH_CAUSES) | set(died) | set(again)):
            crashes.add_metric([name, cause], died.get(cause, 0))
            redispatches.add_metric([name, cause], again.get(cause, 0))
        redispatches.add_metric([name, "orphan"], counters.get("reconciled", 0))
        for kind, family in memory.items():
            sizes = [(r.room, getattr(r, f"{kind}_mb") * MB) for r in worker.rooms if getattr(r, f"{kind}_mb")]
            if room_names:
                for room, size in sizes:
                    family.add_metric([name, room], size)
            else:
                family.add_metric([name], sum(size for _, size in sizes))
            if kind == "pss":
                largest.add_metric([name], max((size for _, size in sizes), default=0))
    yield from (registered, draining, rooms, starts, crashes, redispatches, give_ups, *memory.values(), largest)


def _one(
    kind: type[GaugeMetricFamily | CounterMetricFamily], name: str, text: str, value: float | None
) -> Iterator[Metric]:
    """A series without labels, when its value is known."""
    if value is not None:
        family = kind(name, text)
        family.add_metric([], value)
        yield family


def _store_families(report: status.Report) -> Iterator[Metric]:
    redis, postgres, flusher = report.redis, report.postgres, report.flusher
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    yield from _one(gauge, "appliance_redis_up", "1 when Redis answers", redis.ok)
    if redis.ok:
        yield from _one(gauge, "appliance_redis_used_memory_bytes", "Redis used_memory", (redis.used_mb or 0) * MB)
        yield from _one(gauge, "appliance_redis_maxmemory_bytes", "maxmemory (0: none)", (redis.maxmemory_mb or 0) * MB)
        yield from _one(gauge, "appliance_redis_keys", "Keys in the appliance's database", redis.keys)
        yield from _one(
            gauge, "appliance_redis_stream_length", "Write-ahead entries not yet flushed", redis.stream_length
        )
        yield from _one(
            gauge, "appliance_redis_stream_pending", "Of those, read and not yet acknowledged", redis.pending
        )
        yield from _one(counter, "appliance_redis_evicted_keys", "Keys evicted at maxmemory", redis.evicted_keys)
        yield from _one(counter, "appliance_redis_keyspace_hits", "Key lookups that found it", redis.keyspace_hits)
        yield from _one(counter, "appliance_redis_keyspace_misses", "Key lookups that did not", redis.keyspace_misses)
    if report.livekit is not None:
        yield from _one(gauge, "appliance_livekit_up", "1 when LiveKit's health check answers OK", report.livekit.ok)
    yield from _one(gauge, "appliance_postgres_up", "1 when PostgreSQL answers", postgres.ok)
    if postgres.ok:
        size = None if postgres.size_mb is None else postgres.size_mb * MB
        yield from _one(gauge, "appliance_postgres_size_bytes", "Size of the appliance's database", size)
        yield from _one(gauge, "appliance_postgres_connections", "Client connections", postgres.connections)
        yield from _one(gauge, "appliance_postgres_max_connections", "max_connections", postgres.max_connections)
    yield from _one(gauge, "appliance_flusher_up", "1 when the flusher publishes its figures", flusher.ok)
    if flusher.ok:
        lag = None if flusher.lag_ms is None else flusher.lag_ms / 1000
        yield from _one(gauge, "appliance_flusher_lag_seconds", "Age of the oldest entry not yet stored", lag)
        yield from _one(gauge, "appliance_flusher_backlog", "Entries waiting", flusher.backlog)
        yield from _one(gauge, "appliance_flusher_spool_files", "Spool files waiting", flusher.spool_files)
        yield from _one(counter, "appliance_flusher_persisted", "Entries written to PostgreSQL", flusher.persisted)
        yield from _one(counter, "appliance_flusher_errors", "Failed flushes", flusher.errors)
        yield from _one(counter, "appliance_flusher_dead_lettered", "Entries set aside", flusher.dead_lettered)


def _box_families(data_dir: Path) -> Iterator[Metric]:
    while not data_dir.exists() and data_dir != data_dir.parent:
        data_dir = data_dir.parent
    disk = shutil.disk_usage(data_dir)
    yield from _one(GaugeMetricFamily, "appliance_box_disk_free_bytes", "Free on the data disk", disk.free)
    yield from _one(GaugeMetricFamily, "appliance_box_disk_size_bytes", "Size of the data disk", disk.total)
    yield from _one(GaugeMetricFamily, "appliance_box_memory_available_bytes", "Memory available to new processes",
                    psutil.virtual_memory().available)  # fmt: skip
    yield from _one(GaugeMetricFamily, "appliance_box_cpu_utilisation", "CPU busy since the previous scrape, 0..1",
                    psutil.cpu_percent(interval=None) / 100)  # fmt: skip
    network = CounterMetricFamily("appliance_box_network_bytes", "Bytes through every interface", labels=["direction"])
    counters = psutil.net_io_counters()
    network.add_metric(["received"], counters.bytes_recv)
    network.add_metric(["sent"], counters.bytes_sent)
    yield network


class ReportCollector(Collector):
    """A registry's collector over one status report and the recorded figures, taken by the scrape that asks."""

    def __init__(self, report: status.Report, figures: list[Metric], *, room_names: bool, data_dir: Path) -> None:
        self.report, self.figures, self.room_names, self.data_dir = report, figures, room_names, data_dir

    def collect(self) -> Iterator[Metric]:
        yield from families(self.report, room_names=self.room_names, data_dir=self.data_dir)
        yield from self.figures


def exposition(report: status.Report, figures: list[Metric], *, room_names: bool, data_dir: Path) -> bytes:
    """The series of a status report and the figures the programs recorded (appliance/recorded.py)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(report, figures, room_names=room_names, data_dir=data_dir))
    return generate_latest(registry)


def health_body(report: status.Report) -> tuple[int, str]:
    """The health endpoint's answer, its HTTP status and JSON body: 503 when the box cannot serve rooms
    (status.unserviceable), else 200 with the verdict, healthy or degraded."""
    reasons = status.unserviceable(report)
    body = {"state": report.state, "verdict": report.verdict, "problems": report.problems, "unserviceable": reasons}
    return (503 if reasons else 200), json.dumps(body)


def authorized(header: str, token: str | None) -> bool:
    """Whether an Authorization header carries the bearer token (always, when none is set)."""
    return token is None or hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


# ---- the program ------------------------------------------------------------------------------------------------


def make_apps(settings: ApplianceSettings, layout: Layout) -> tuple[web.Application, web.Application]:
    token = settings.metrics.token.get_secret_value() if settings.metrics.token else None

    directories = recorded.directories(settings, layout)

    def scrape() -> tuple[status.Report, list[Metric]]:
        figures = recorded.read(directories, compact=True)
        return status.collect(settings, layout, figures), figures

    async def report() -> status.Report:
        return await asyncio.to_thread(status.collect, settings, layout)

    async def metrics(request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization", ""), token):
            return web.Response(status=401, text="a bearer token is required\n")
        taken, figures = await asyncio.to_thread(scrape)
        body = exposition(taken, figures, room_names=settings.metrics.room_names, data_dir=settings.control.data_dir)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        code, body = health_body(await report())
        return web.Response(status=code, text=body + "\n", content_type="application/json")

    metrics_app, health_app = web.Application(), web.Application()
    metrics_app.router.add_get("/metrics", metrics)
    health_app.router.add_get("/health", health)
    return metrics_app, health_app


async def serve(settings: ApplianceSettings, layout: Layout) -> None:
    m = settings.metrics
    metrics_app, health_app = make_apps(settings, layout)
    log.info(
        "metrics on http://%s:%d/metrics, health on http://%s:%d/health", m.bind, m.port, m.health_bind, m.health_port
    )
    # shutdown_timeout 0: a scraper's keep-alive connection never holds up a stop.
    await serve_until_signal([(metrics_app, m.bind, m.port), (health_app, m.health_bind, m.health_port)], 0.0)


if __name__ == "__main__":
    run_program(serve)
