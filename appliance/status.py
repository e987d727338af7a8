"""``appliance status``'s data: every program, the workers and their rooms, Redis, PostgreSQL, the flusher, a verdict.

Each probe has a short timeout and runs beside the others; one that fails or hangs becomes a problem in the
report, never an exception. The exit code follows supervisorctl/LSB: 0 healthy, 1 degraded (running, something
wrong), 3 not running (supervisord's socket absent or refusing), 4 unknown (it answers wrongly, permission denied).
No secret ever reaches the report: every string in it is scrubbed of the settings' secret values.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from appliance import agents, recorded
from appliance import events as events_mod
from appliance.masking import mask, secret_values
from appliance.probes import (
    DEADLINE_S,
    Flusher,
    LiveKit,
    Postgres,
    Redis,
    Supervisord,
    Worker,
    error_text,
    probe_livekit,
    probe_postgres,
    probe_redis,
    probe_supervisor,
    probe_worker,
    run_parallel,
    tree_pss_mb,
)
from appliance.programs import WORKERS, status_port
from appliance.supervisor import ProcessInfo, SupervisorDown

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

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

# Thresholds of a degraded verdict. Redis at 90% of maxmemory is evicting caches and close to refusing writes
# (the stream has no TTL, so volatile-lru cannot free it). The flusher normally lags by milliseconds; half a
# minute means PostgreSQL is down or slow, and messages pile up in the stream.
REDIS_NEAR_CAP = 0.9
FLUSHER_LAG_HIGH_MS = 30_000.0
PG_CONNECTIONS_HIGH = 0.9


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
    livekit: LiveKit | None = None  # None: not probed (supervisord down)
    agent: str = ""  # what the worker runs: "name version (factory)" (`appliance agent status` says more)
    # Count and quantiles (seconds) of each of recorded.LATENCIES, since each recording program started; empty
    # while [metrics] is off (nothing is recorded then).
    latency: dict[str, dict[str, float | None]] = {}
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
    livekit: LiveKit | None = None,
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
    if livekit is not None and not livekit.ok and any(p.name in WORKERS for p in programs):
        problems.append(f"livekit at {livekit.url}: {livekit.error}")  # what the workers register with
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
    elif (
        postgres.connections
        and postgres.max_connections
        and postgres.connections >= PG_CONNECTIONS_HIGH * postgres.max_connections
    ):
        yield f"postgres: {postgres.connections} of {postgres.max_connections} connections in use"
    if not judge_flusher:
        return
    if redis.ok and not flusher.ok:
        yield f"flusher: {flusher.error}"
    elif flusher.lag_ms is not None and flusher.lag_ms >= FLUSHER_LAG_HIGH_MS:
        yield f"flusher: lagging {flusher.lag_ms / 1000:.0f} s behind (is PostgreSQL slow or down?)"


def unserviceable(report: Report) -> list[str]:
    """Why this box cannot serve rooms now (empty when it can): no worker registered with LiveKit, Redis or
    PostgreSQL unreachable, the flusher lagging, a program crash-looping. The health endpoint answers 503 for these;
    other problems make the verdict degraded but the box still serves."""
    reasons = []
    if not report.supervisord.ok:
        reasons.append(report.supervisord.error or "supervisord does not answer")
    if not any(w.ok and w.registered and not w.draining for w in report.workers):
        reasons.append("no worker registered with LiveKit takes rooms")
    if not report.redis.ok:
        reasons.append(f"redis: {report.redis.error}")
    if not report.postgres.ok:
        reasons.append(f"postgres: {report.postgres.error}")
    if report.flusher.lag_ms is not None and report.flusher.lag_ms >= FLUSHER_LAG_HIGH_MS:
        reasons.append(f"flusher: lagging {report.flusher.lag_ms / 1000:.0f} s behind")
    reasons += [f"{p.name} is crash-looping" for p in report.programs if p.crash_loop]
    return reasons


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


def collect(settings: ApplianceSettings, layout: Layout, figures: list[Metric] | None = None) -> Report:
    """Probe everything at once, each within its timeout, and judge. ``figures``: what the programs recorded, when
    the caller has read it already (the exporter); else it is read here."""
    probes: dict[str, Callable[[], Any]] = {
        "supervisor": lambda: probe_supervisor(layout),
        "redis": lambda: probe_redis(settings),
        "postgres": lambda: probe_postgres(settings),
        "livekit": lambda: probe_livekit(settings),
    }
    for name in WORKERS:
        probes[name] = functools.partial(probe_worker, settings, name)
    results = run_parallel(probes, DEADLINE_S)

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

    restarts = events_mod.load(events_mod.events_file(layout.run_dir))
    now = time.time()
    programs = [_program(info, restarts, now) for info in infos]

    workers = []
    running = {info.name for info in infos if info.running}
    for name in WORKERS:
        # With supervisord up, a worker is probed when it runs; without it, whatever answers is shown.
        result = results[name]
        if isinstance(result, BaseException):  # it hung past the deadline
            result = Worker(program=name, port=status_port(settings, name), ok=False, error=error_text(result))
        if name in running or (not supervisord.ok and result.ok):
            workers.append(result)

    redis_result, pg_result = results["redis"], results["postgres"]
    if isinstance(redis_result, BaseException):
        redis = Redis(ok=False, error=error_text(redis_result))
        flusher = Flusher(ok=False, error="unknown: Redis does not answer")
    else:
        redis, flusher = redis_result
    postgres = Postgres(ok=False, error=error_text(pg_result)) if isinstance(pg_result, BaseException) else pg_result
    lk_result = results["livekit"]
    url = settings.livekit.url
    livekit = (
        LiveKit(ok=False, url=url, error=error_text(lk_result)) if isinstance(lk_result, BaseException) else lk_result
    )

    code, problems = judge(
        supervisord,
        programs,
        workers,
        redis,
        postgres,
        flusher,
        livekit=livekit,
        events_missing=supervisord.ok and restarts is None,
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
        livekit=livekit,
        agent=agents.running(settings).summary(),
        latency=recorded.latencies(
            recorded.read(recorded.directories(settings, layout)) if figures is None else figures
        ),
        collected_at=now,
    )
    return scrub(report, secret_values(settings))


def _program(info: ProcessInfo, restarts: events_mod.Events | None, now: float) -> Program:
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
    if restarts is not None:
        counts = restarts.programs.get(info.name, events_mod.ProgramEvents())
        program.restarts, program.unexpected_exits = counts.restarts, counts.unexpected_exits
        program.crash_loop = info.state == "FATAL" or counts.crash_looping(now)
    else:
        program.crash_loop = info.state == "FATAL"
    return program


# ---------------------------------------------------------------------------------------------------------------
# Secrets never shown.


def scrub(report: Report, secrets: list[str]) -> Report:
    """The report with every secret value masked, wherever an error message may have echoed it."""
    text = report.model_dump_json()
    masked = mask(text, (json.dumps(secret)[1:-1] for secret in secrets))  # as JSON escapes them
    return report if masked == text else Report.model_validate_json(masked)
