"""The probes: each part of the appliance asked how it is, within a short timeout, as a typed result.

``appliance status`` runs them all at once (``run_parallel``) and judges; ``doctor``, install's wait for health and
a graceful restart's wait for registration ask the same probes. A probe raises when it gets no answer; the runner
turns that (or a hang past the deadline) into that probe's result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil
from pydantic import BaseModel, Field

from agent.status_client import fetch_status
from appliance.programs import status_port
from appliance.supervisor import ProcessInfo, Supervisor

if TYPE_CHECKING:
    from appliance.layout import Layout
    from appliance.settings import ApplianceSettings

# Timeouts: status answers within a few seconds whatever hangs; a store slower than this is a problem anyway.
SUPERVISOR_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 2.0
DEADLINE_S = 4.0  # a probe still running then is reported as not answering


class Supervisord(BaseModel):
    ok: bool
    socket: str
    pid: int | None = None
    error: str = ""


class Room(BaseModel):
    room: str
    conversation: str | None = None
    job_id: str | None = None
    pid: int | None = None
    pss_mb: float | None = None
    uss_mb: float | None = None


class Worker(BaseModel):
    program: str
    port: int
    ok: bool
    error: str = ""
    worker_id: str = ""
    registered: bool = False  # LiveKit gave it an id (AW_…): it can be dispatched rooms
    draining: bool = False
    rooms: list[Room] = Field(default_factory=list)
    counters: dict[str, Any] = Field(default_factory=dict)


class Redis(BaseModel):
    ok: bool
    error: str = ""
    used_mb: float | None = None
    maxmemory_mb: float | None = None  # None: no cap set
    used_ratio: float | None = None
    evicted_keys: int | None = None
    keys: int | None = None
    keyspace_hits: int | None = None
    keyspace_misses: int | None = None
    stream_length: int | None = None  # write-ahead entries not yet flushed and deleted
    pending: int | None = None  # of those, read by the flusher and not yet acknowledged


class Postgres(BaseModel):
    ok: bool
    error: str = ""
    size_mb: float | None = None
    connections: int | None = None
    max_connections: int | None = None


class LiveKit(BaseModel):
    ok: bool
    url: str
    error: str = ""
    latency_ms: float | None = None


class Flusher(BaseModel):
    ok: bool  # its published figures are there (they expire soon after the flusher stops publishing)
    error: str = ""
    lag_ms: float | None = None  # age of the oldest entry not yet flushed
    backlog: int | None = None
    persisted: int | None = None
    errors: int | None = None
    dead_lettered: int | None = None
    spool_files: int | None = None
    age_s: float | None = None  # how old the published figures are


def run_parallel(probes: dict[str, Callable[[], Any]], deadline_s: float) -> dict[str, Any]:
    """Run every probe in its own daemon thread; a probe's exception, or a TimeoutError when it hangs, is its result.

    Daemon threads: a hung probe must not keep the command from exiting.
    """
    results: dict[str, Any] = {}

    def run(name: str, probe: Callable[[], Any]) -> None:
        try:
            results[name] = probe()
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=item, daemon=True, name=f"probe-{item[0]}") for item in probes.items()]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return {name: results.get(name, TimeoutError(f"no answer within {deadline_s:.0f} s")) for name in probes}


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def probe_supervisor(layout: Layout) -> tuple[int, list[ProcessInfo]]:
    supervisor = Supervisor(layout.supervisor_socket, timeout_s=SUPERVISOR_TIMEOUT_S)
    return supervisor.supervisord_pid(), supervisor.processes()


def tree_pss_mb(pid: int) -> tuple[float | None, int]:
    """PSS of a process and all its descendants, in MB, and how many processes that is (None: not readable)."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None, 0
    total, counted = 0, 0
    for proc in tree:
        try:
            total += proc.memory_full_info().pss
            counted += 1
        except psutil.NoSuchProcess:
            continue  # a room that ended meanwhile
        except psutil.Error:
            return None, len(tree)  # another user's process: a partial sum would mislead
    return round(total / 2**20, 1), counted


def probe_worker(settings: ApplianceSettings, program: str, timeout_s: float = PROBE_TIMEOUT_S) -> Worker:
    """A worker program's own status (rooms, counters, registration with LiveKit); not ok when it does not answer."""
    port = status_port(settings, program)
    try:
        answer = fetch_status(port, settings.livekit, timeout_s)
    except (OSError, ValueError) as exc:
        return worker_report(program, port, exc)
    return worker_report(program, port, answer)


def worker_report(program: str, port: int, result: Any) -> Worker:
    """A worker's status from its endpoint's answer, or from the exception that stood for one."""
    if isinstance(result, BaseException):
        return Worker(program=program, port=port, ok=False, error=error_text(result))
    worker_id = str(result.get("worker_id") or "")
    return Worker(
        program=program,
        port=port,
        ok=True,
        worker_id=worker_id,
        # livekit-agents calls its worker "unregistered" until LiveKit accepted it (older endpoints lack the flag).
        registered=bool(result.get("registered", worker_id.startswith("AW_"))),
        draining=bool(result.get("draining")),
        rooms=[Room.model_validate(room) for room in result.get("rooms", [])],
        counters=dict(result.get("counters", {})),
    )


def probe_livekit(settings: ApplianceSettings) -> LiveKit:
    """The LiveKit the workers register with (the bundled one or one elsewhere): its health check, GET / on its
    HTTP(S) address, answers 200 "OK" while its node is up to date."""
    import urllib.error
    import urllib.request

    url = settings.livekit.url
    http = "http" + url.removeprefix("ws") if url.startswith("ws") else url
    started = time.monotonic()
    try:
        with urllib.request.urlopen(http.rstrip("/") + "/", timeout=PROBE_TIMEOUT_S) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        return LiveKit(ok=False, url=url, error=f"its health check answered {exc.code}: {exc.read()[:60].decode()!r}")
    except (OSError, ValueError) as exc:
        return LiveKit(ok=False, url=url, error=f"unreachable ({error_text(exc)})")
    return LiveKit(ok=True, url=url, latency_ms=round((time.monotonic() - started) * 1000, 1))


def probe_redis(settings: ApplianceSettings) -> tuple[Redis, Flusher]:
    import redis as redis_lib

    from agent.store.keys import GROUP, Keys
    from appliance.stores import redis_client

    client = redis_client(settings.redis, timeout_s=PROBE_TIMEOUT_S, retry=False)
    keys = Keys(settings.store.key_prefix)
    with client:
        memory: dict[str, Any] = client.info("memory")
        stats: dict[str, Any] = client.info("stats")
        pipe = client.pipeline(transaction=False)
        pipe.xlen(keys.stream)
        pipe.hgetall(keys.flusher_stats)
        pipe.dbsize()
        stream_length, published, key_count = pipe.execute()
        pending = None
        if stream_length:
            try:
                groups: list[dict[Any, Any]] = client.xinfo_groups(keys.stream)
            except redis_lib.ResponseError:
                groups = []
            pending = next((int(g["pending"]) for g in groups if _text(g["name"]) == GROUP), None)
    used, cap = int(memory["used_memory"]), int(memory.get("maxmemory", 0))
    redis = Redis(
        ok=True,
        used_mb=round(used / 2**20, 1),
        maxmemory_mb=round(cap / 2**20, 1) if cap else None,
        used_ratio=round(used / cap, 3) if cap else None,
        evicted_keys=int(stats.get("evicted_keys", 0)),
        keys=int(key_count),
        keyspace_hits=int(stats.get("keyspace_hits", 0)),
        keyspace_misses=int(stats.get("keyspace_misses", 0)),
        stream_length=int(stream_length),
        pending=pending if stream_length else 0,
    )
    return redis, _flusher({_text(k): _text(v) for k, v in published.items()})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flusher(published: dict[str, str]) -> Flusher:
    if not published:
        return Flusher(ok=False, error="publishes no figures (not running, or cannot reach Redis)")

    def number(key: str) -> float | None:
        try:
            return float(published[key])
        except (KeyError, ValueError):
            return None

    def count(key: str) -> int | None:
        value = number(key)
        return None if value is None else int(value)

    updated = number("updated_at")
    return Flusher(
        ok=True,
        lag_ms=number("lag_ms"),
        backlog=count("backlog"),
        persisted=count("persisted"),
        errors=count("errors"),
        dead_lettered=count("dead_lettered"),
        spool_files=count("spool_files"),
        age_s=None if updated is None else round(max(0.0, time.time() - updated), 1),
    )


def probe_postgres(settings: ApplianceSettings) -> Postgres:
    import psycopg

    from appliance.stores import connect_postgres, postgres_reason

    pg = settings.postgres
    try:
        # The statement timeout bounds a server that accepts and stalls.
        with connect_postgres(pg, timeout_s=PROBE_TIMEOUT_S) as conn:
            row = conn.execute(
                "SELECT pg_database_size(current_database()),"
                " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),"
                " current_setting('max_connections')::int"
            ).fetchone()
    except psycopg.Error as exc:
        raise ConnectionError(f"{pg.host}:{pg.port}: {postgres_reason(exc)}") from None
    assert row is not None
    size, connections, max_connections = row
    return Postgres(
        ok=True,
        size_mb=round(int(str(size)) / 2**20, 1),
        connections=int(str(connections)),
        max_connections=int(str(max_connections)),
    )
