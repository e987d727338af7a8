"""The appliance's programs under supervisord: one table of what each is, read by everything that names, orders,
groups or probes them (render, service, install, restore, logs, status, doctor, uninstall)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agent.store.acl import AclUser
    from appliance.settings import ApplianceSettings


@dataclass(frozen=True)
class Port:
    """A port a program listens on, named by the setting that holds it."""

    setting: str  # "section.field"
    proto: Literal["tcp", "udp"] = "tcp"
    # What the port serves, where a program has several: a worker's "health" and "status" ports.
    purpose: str = ""

    def number(self, settings: ApplianceSettings) -> int:
        section, name = self.setting.split(".")
        return int(getattr(getattr(settings, section), name))


@dataclass(frozen=True)
class Program:
    name: str  # supervisord's program name
    # What an operator calls it (`appliance logs`, `appliance restart`); its journal identifier is appliance-<service>.
    # The two workers of a graceful restart are one service.
    service: str
    priority: int  # supervisord starts programs in ascending priority and stops them in reverse
    # Every box, own stores, bundled LiveKit, [metrics] on, [metrics] prometheus on, the console (role all, on).
    runs: Literal["always", "stores", "livekit", "metrics", "prometheus", "console"]
    reads: frozenset[str] = frozenset()  # settings sections whose change restarts it (its rendered files aside)
    worker: bool = False  # one of the two workers a graceful restart alternates between
    writes_store: bool = False  # writes conversations: stopped for a restore, first
    ours: bool = False  # runs the appliance's own Python code: a new version restarts it
    redis_user: AclUser | None = None  # its own ACL user on the appliance's own Redis
    # Records figures (agent/metrics.py) in Layout.figures_dir, which the exporter reads, while [metrics] is on.
    records: bool = False
    ports: tuple[Port, ...] = ()
    # The level of a stderr line without a "<N>" prefix: an error, but PostgreSQL's stderr holds, at every start,
    # "LOG: ending log output to stderr" and its HINT before it switches to syslog, which as errors are a false alarm.
    stderr_level: str = "err"
    # Writes its level as text in each line (zap's "\tINFO\t", logfmt's "level=info"): appliance.logprefix turns it
    # into the journal's priority.
    prefix_levels: bool = False
    # How supervisord stops it: the signal, and how long it waits before KILL (None: the worker's, from its drain).
    stopsignal: str = "TERM"
    stopwaitsecs: int | None = 60
    startsecs: int = 3
    autostart: bool = True

    def runs_with(self, settings: ApplianceSettings) -> bool:
        if self.runs == "stores":
            return settings.runs_stores
        if self.runs == "livekit":
            return settings.bundles_livekit
        if self.runs == "metrics":
            return settings.metrics.enabled
        if self.runs == "prometheus":
            return settings.metrics.enabled and settings.metrics.prometheus
        if self.runs == "console":  # the box's front door: on the box of role "all"
            return settings.control.role == "all" and settings.console.enabled
        return True

    def port(self, purpose: str, settings: ApplianceSettings) -> int:
        return next(p.number(settings) for p in self.ports if p.purpose == purpose)


_STORE_READER = frozenset({"redis", "postgres", "store"})

_WORKER = Program(
    "worker",
    "worker",
    50,
    "always",
    reads=_STORE_READER | {"worker", "models", "livekit", "agent"},
    worker=True,
    writes_store=True,
    ours=True,
    redis_user="worker",
    records=True,
    ports=(Port("worker.health_port", purpose="health"), Port("worker.status_port", purpose="status")),
    stopwaitsecs=None,
    startsecs=5,
)

PROGRAMS: tuple[Program, ...] = (
    # TERM is Redis's clean shutdown: the AOF is flushed and fsynced before it exits.
    Program("redis", "redis", 10, "stores", ports=(Port("redis.port"),)),
    # INT is PostgreSQL's "fast" shutdown: open transactions roll back, a checkpoint is written. TERM ("smart")
    # would wait for every client to leave, which a stopping worker may not yet have.
    Program(
        "postgres",
        "postgres",
        20,
        "stores",
        ports=(Port("postgres.port"),),
        stderr_level="notice",
        stopsignal="INT",
        stopwaitsecs=120,
    ),
    # On TERM livekit-server refuses new sessions, then waits for every participant to leave, without limit (its
    # second signal forces; supervisord sends one). It stops after the worker has drained, so the people left are
    # in rooms without an agent: waiting for them serves nothing. KILL after 5 s.
    Program(
        "livekit",
        "livekit",
        30,
        "livekit",
        prefix_levels=True,
        stopwaitsecs=5,
        ports=(
            Port("livekit_server.port"),
            Port("livekit_server.rtc_udp_port", "udp"),
            Port("livekit_server.rtc_tcp_port"),  # 0: ICE over TCP off
        ),
    ),
    # The exporter and health endpoint: it asks what `appliance status` asks, on each scrape.
    Program(
        "metrics",
        "metrics",
        35,
        "metrics",
        reads=frozenset({"metrics", "redis", "postgres", "store", "livekit", "worker", "control"}),
        ours=True,
        ports=(Port("metrics.port"), Port("metrics.health_port")),
        stopwaitsecs=10,
    ),
    # The optional bundled Prometheus: it scrapes the exporter and evaluates the alert rules. TERM is its clean
    # shutdown (the head block's WAL is closed); a large head can take a while to write out.
    Program(
        "prometheus",
        "prometheus",
        36,
        "prometheus",
        reads=frozenset({"metrics"}),
        ports=(Port("metrics.prometheus_port"),),
        prefix_levels=True,
        stopwaitsecs=60,
    ),
    # The web console: a page and a token endpoint; it mints LiveKit tokens with the API key and secret.
    Program(
        "console",
        "console",
        37,
        "console",
        reads=frozenset({"console", "livekit", "control"}),
        ours=True,
        ports=(Port("console.port"),),
        stopwaitsecs=10,
    ),
    # TERM: the flusher writes what it has read, acknowledges it and exits.
    Program(
        "flusher",
        "flusher",
        40,
        "always",
        reads=_STORE_READER | {"flusher"},
        writes_store=True,
        ours=True,
        redis_user="flusher",
        records=True,
    ),
    # TERM: the worker drains its rooms. worker-alt is the second worker a graceful restart starts before the
    # running one drains: the same program on its own ports, not started with the others.
    _WORKER,
    replace(
        _WORKER,
        name="worker-alt",
        ports=(Port("control.alt_health_port", purpose="health"), Port("control.alt_status_port", purpose="status")),
        autostart=False,
    ),
)

BY_NAME = {p.name: p for p in PROGRAMS}
WORKERS: tuple[str, ...] = tuple(p.name for p in PROGRAMS if p.worker)
# The programs that write conversations, workers first: a restore stops them in this order (the workers' last
# writes reach the stream, then the flusher drains it) and starts them in reverse.
WRITERS: tuple[str, ...] = tuple(
    sorted((p.name for p in PROGRAMS if p.writes_store), key=lambda name: not BY_NAME[name].worker)
)
# The services in start order: what `appliance restart` and `appliance logs` name (supervisord's own log too).
SERVICES: tuple[str, ...] = tuple(dict.fromkeys(p.service for p in PROGRAMS))
LOGGED: tuple[str, ...] = ("supervisord", *SERVICES)


def on_this_box(settings: ApplianceSettings) -> list[Program]:
    """The programs this box runs, in start order."""
    return [p for p in PROGRAMS if p.runs_with(settings)]


def service_of(name: str) -> str:
    """The service of a supervisord program name (a service's own name is its own)."""
    program = BY_NAME.get(name)
    return program.service if program else name


def readers(section: str) -> frozenset[str]:
    """The services that restart when settings section ``section`` changes."""
    return frozenset(p.service for p in PROGRAMS if section in p.reads)


def ours() -> frozenset[str]:
    """The services that run the appliance's own code."""
    return frozenset(p.service for p in PROGRAMS if p.ours)


def ports(settings: ApplianceSettings) -> list[tuple[str, int, str]]:
    """(setting, port, tcp|udp) of every port this box's programs listen on (a port set to 0 is off)."""
    found = [(port.setting, port.number(settings), port.proto) for p in on_this_box(settings) for port in p.ports]
    return [port for port in found if port[1]]


def status_port(settings: ApplianceSettings, worker: str) -> int:
    return BY_NAME[worker].port("status", settings)
