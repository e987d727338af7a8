"""``appliance status``'s data: every program, the workers and their rooms, Redis, PostgreSQL, the flusher, a verdict.

Each probe has a short timeout and runs beside the others; one that fails or hangs becomes a problem in the
report, never an exception. The exit code follows supervisorctl/LSB: 0 healthy, 1 degraded (running, something
wrong), 3 not running (supervisord's socket absent or refusing), 4 unknown (it answers wrongly, permission denied).
No secret ever reaches the report: every string in it is scrubbed of the settings' secret values.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import psutil
from pydantic import BaseModel, Field

from agent.status_client import fetch_status
from appliance import events as events_mod
from appliance.masking import mask, secret_values
from appliance.programs import WORKERS, status_port
from appliance.supervisor import ProcessInfo, Supervisor, SupervisorDown

if TYPE_CHECKING:
    from appliance.layout import Layout
    from appliance.settings import ApplianceSettings

HEALTHY, DEGRADED, NOT_RUNNING, UNKNOWN = 0, 1, 3, 4
State = Literal["healthy", "degraded", "not running", "unknown"]
STATE_OF_CODE: dict[int, State] = {
    HEALTHY: "healthy",
    DEGRADED: "degraded",
    NOT_RUNNING: "not running",
    UNKNOWN: "unknown",
}

# Timeouts: status answers within a few seconds whatever hangs; a store slower than this is a problem anyway.
SUPERVISOR_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 2.0
DEADLINE_S = 4.0  # a probe still running then is reported as not answering
# Thresholds of a degraded verdict. Redis at 90% of maxmemory is evicting caches and close to refusing writes
# (the stream has no TTL, so volatile-lru cannot free it). The flusher normally lags by milliseconds; half a
# minute means PostgreSQL is down or slow, and messages pile up in the stream.
REDIS_NEAR_CAP = 0.9
FLUSHER_LAG_HIGH_MS = 30_000.0
PG_CONNECTIONS_HIGH = 0.9


class Supervisord(BaseModel):
    ok: bool
    socket: str
    pid: int | None = None
    error: str = ""


class Program(BaseModel):
    name: str
    state: str
    pid: int | None
    uptime_s: int | None
    pss_mb: float | None = None  # the program's process and all its descendants (a worker's rooms included)
    processes: int = 0  # how many processes that sum covers
    restarts: int | None = None  # automatic restarts since supervisord started; None: the event listener is missing
    unexpected_exits: int | None = None
    crash_loop: bool = False
    detail: str = ""  # supervisord's description, or why it could not spawn


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
    stream_length: int | None = None  # write-ahead entries not yet flushed and deleted
    pending: int | None = None  # of those, read by the flusher and not yet acknowledged


class Postgres(BaseModel):
    ok: bool
    error: str = ""
    size_mb: float | None = None
    connections: int | None = None
    max_connections: int | None = None


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


class Report(BaseModel):
    state: State
    exit_code: int
    verdict: str
    problems: list[str]
    supervisord: Supervisord
    programs: list[Program]
    workers: list[Worker]
    redis: Redis
    postgres: Postgres
    flusher: Flusher
    collected_at: float


# ---------------------------------------------------------------------------------------------------------------
# The verdict: a pure function of the parts, so that its rules are tested without any server.


def judge(
    supervisord: Supervisord,
    programs: list[Program],
    workers: list[Worker],
    redis: Redis,
    postgres: Postgres,
    flusher: Flusher,
    *,
    events_missing: bool = False,
    supervisor_down: bool = False,
) -> tuple[int, list[str]]:
    """The exit code and the problems, worst first."""
    if not supervisord.ok:
        return (NOT_RUNNING if supervisor_down else UNKNOWN), [supervisord.error]
    problems = list(_program_problems(programs))
    problems += _worker_problems(programs, workers)
    if events_missing:
        problems.append("restart counts unavailable: the event listener (program events) has written nothing")
    problems += _store_problems(redis, postgres, flusher, judge_flusher=any(p.name == "flusher" for p in programs))
    return (DEGRADED if problems else HEALTHY), problems


def _program_problems(programs: list[Program]) -> Iterator[str]:
    others_run = worker_running(programs)
    for program in programs:
        yield from program_problems(program, worker_running=others_run)


def worker_running(programs: list[Program]) -> bool:
    return any(p.name in WORKERS and p.state == "RUNNING" for p in programs)


def program_problems(program: Program, *, worker_running: bool) -> list[str]:
    """What is wrong with one program, given whether one of the two workers runs."""
    problems = []
    if program.crash_loop:
        problems.append(
            f"{program.name} is crash-looping ({program.unexpected_exits} unexpected exits, {program.state})"
        )
    # The idle one of the two workers is STOPPED (or never started) by design while the other runs.
    idle_worker = program.name in WORKERS and worker_running and program.state in ("STOPPED", "EXITED")
    if program.state != "RUNNING" and not idle_worker:
        detail = f": {program.detail}" if program.detail else ""
        problems.append(f"{program.name} is {program.state}{detail}")
    return problems


def _worker_problems(programs: list[Program], workers: list[Worker]) -> Iterator[str]:
    if not any(p.name in WORKERS for p in programs):
        return
    for worker in workers:
        if not worker.ok:
            yield f"{worker.program}: no status on 127.0.0.1:{worker.port} ({worker.error})"
        elif not worker.registered and not worker.draining:
            yield f"{worker.program} is not registered with LiveKit (is LiveKit reachable?)"
    answering = [w for w in workers if w.ok]
    if answering and not any(w.registered and not w.draining for w in answering):
        yield "no worker takes new rooms (every running worker is draining or unregistered)"


def _store_problems(redis: Redis, postgres: Postgres, flusher: Flusher, *, judge_flusher: bool) -> Iterator[str]:
    if not redis.ok:
        yield f"redis: {redis.error}"
    elif redis.used_ratio is not None and redis.used_ratio >= REDIS_NEAR_CAP:
        yield f"redis: {redis.used_ratio:.0%} of maxmemory used ({redis.used_mb} of {redis.maxmemory_mb} MB)"
    if not postgres.ok:
        yield f"postgres: {postgres.error}"
    elif postgres.connections and postgres.max_connections:
        if postgres.connections >= PG_CONNECTIONS_HIGH * postgres.max_connections:
            yield f"postgres: {postgres.connections} of {postgres.max_connections} connections in use"
    if not judge_flusher:
        return
    if redis.ok and not flusher.ok:
        yield f"flusher: {flusher.error}"
    elif flusher.lag_ms is not None and flusher.lag_ms >= FLUSHER_LAG_HIGH_MS:
        yield f"flusher: lagging {flusher.lag_ms / 1000:.0f} s behind (is PostgreSQL slow or down?)"


def verdict_line(code: int, problems: list[str], programs: list[Program], workers: list[Worker]) -> str:
    state = STATE_OF_CODE[code]
    if code == HEALTHY:
        running = sum(1 for p in programs if p.state == "RUNNING")
        rooms = sum(len(w.rooms) for w in workers)
        return f"healthy: {running} programs running, {rooms} room{'s' if rooms != 1 else ''}"
    first = problems[0] if problems else "?"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{state}: {first}{more}"


# ---------------------------------------------------------------------------------------------------------------
# The probes.


def collect(settings: ApplianceSettings, layout: Layout) -> Report:
    """Probe everything at once, each within its timeout, and judge."""
    probes: dict[str, Callable[[], Any]] = {
        "supervisor": lambda: probe_supervisor(layout),
        "redis": lambda: probe_redis(settings),
        "postgres": lambda: probe_postgres(settings),
    }
    for name in WORKERS:
        probes[name] = functools.partial(probe_worker, settings, status_port(settings, name))
    results = _parallel(probes, DEADLINE_S)

    supervisor_down = False
    supervisord = Supervisord(ok=False, socket=str(layout.supervisor_socket))
    infos: list[ProcessInfo] = []
    sup = results["supervisor"]
    if isinstance(sup, SupervisorDown):
        supervisord.error, supervisor_down = str(sup), True
    elif isinstance(sup, BaseException):
        supervisord.error = f"supervisord: {error_text(sup)}"
    else:
        supervisord.ok, supervisord.pid, infos = True, sup[0], sup[1]

    recorded = events_mod.load(events_mod.events_file(layout.run_dir))
    now = time.time()
    programs = [_program(info, recorded, now) for info in infos]

    workers = []
    running = {info.name for info in infos if info.running}
    for name in WORKERS:
        # With supervisord up, a worker is probed when it runs; without it, whatever answers is shown.
        result = results[name]
        if name in running or (not supervisord.ok and not isinstance(result, BaseException)):
            workers.append(worker_report(name, status_port(settings, name), result))

    redis_result, pg_result = results["redis"], results["postgres"]
    if isinstance(redis_result, BaseException):
        redis = Redis(ok=False, error=error_text(redis_result))
        flusher = Flusher(ok=False, error="unknown: Redis does not answer")
    else:
        redis, flusher = redis_result
    postgres = Postgres(ok=False, error=error_text(pg_result)) if isinstance(pg_result, BaseException) else pg_result

    code, problems = judge(
        supervisord,
        programs,
        workers,
        redis,
        postgres,
        flusher,
        events_missing=supervisord.ok and recorded is None,
        supervisor_down=supervisor_down,
    )
    report = Report(
        state=STATE_OF_CODE[code],
        exit_code=code,
        verdict=verdict_line(code, problems, programs, workers),
        problems=problems,
        supervisord=supervisord,
        programs=programs,
        workers=workers,
        redis=redis,
        postgres=postgres,
        flusher=flusher,
        collected_at=now,
    )
    return scrub(report, secret_values(settings))


def _parallel(probes: dict[str, Callable[[], Any]], deadline_s: float) -> dict[str, Any]:
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


def _program(info: ProcessInfo, recorded: events_mod.Events | None, now: float) -> Program:
    program = Program(
        name=info.name,
        state=info.state,
        pid=info.pid or None,
        uptime_s=info.uptime_s if info.running else None,
        # supervisord's description is a date for STOPPED and EXITED; a reason for FATAL and BACKOFF.
        detail=info.spawnerr or (info.description if info.state in ("FATAL", "BACKOFF") else ""),
    )
    if info.pid:
        program.pss_mb, program.processes = tree_pss_mb(info.pid)
    if recorded is not None:
        counts = recorded.programs.get(info.name, events_mod.ProgramEvents())
        program.restarts, program.unexpected_exits = counts.restarts, counts.unexpected_exits
        program.crash_loop = info.state == "FATAL" or counts.crash_looping(now)
    else:
        program.crash_loop = info.state == "FATAL"
    return program


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


def probe_worker(settings: ApplianceSettings, port: int) -> dict[str, Any]:
    return fetch_status(port, settings.livekit, PROBE_TIMEOUT_S)


def worker_report(program: str, port: int, result: Any) -> Worker:
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


def probe_redis(settings: ApplianceSettings) -> tuple[Redis, Flusher]:
    import redis as redis_lib

    from agent.store.keys import GROUP, Keys
    from appliance.stores import redis_client

    client = redis_client(settings.redis, timeout_s=PROBE_TIMEOUT_S)
    keys = Keys(settings.store.key_prefix)
    with client:
        memory: dict[str, Any] = client.info("memory")
        stats: dict[str, Any] = client.info("stats")
        pipe = client.pipeline(transaction=False)
        pipe.xlen(keys.stream)
        pipe.hgetall(keys.flusher_stats)
        stream_length, published = pipe.execute()
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


# ---------------------------------------------------------------------------------------------------------------
# Secrets never shown.


def scrub(report: Report, secrets: list[str]) -> Report:
    """The report with every secret value masked, wherever an error message may have echoed it."""
    text = report.model_dump_json()
    masked = mask(text, (json.dumps(secret)[1:-1] for secret in secrets))  # as JSON escapes them
    return report if masked == text else Report.model_validate_json(masked)
