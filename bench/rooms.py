"""Benchmark of rooms: N rooms x 2 text participants x M lines against a real worker, our configuration against
livekit-agents' defaults and against spawn, in one run: greeting and reply latency, memory per room, and how long
a room waits for its agent after kill -9 of the room's process.

    sudo python -m bench.rooms [--rooms 10,50] [--messages M] [--quick] [--json]

It starts its own livekit-server, Redis and PostgreSQL (migrated), and for each configuration a worker and a
flusher, all inside a private network namespace whose only addresses are loopback, so it must run as root. There
is no option to use the appliance's running servers: WebRTC clients cannot reach them from that namespace. Every
client is a ChatClient in this one process. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import psutil

from bench.environment import BenchError
from bench.figures import Target
from bench.rooms_load import FULL, QUICK, Load, Plan, Room, RoomNotKillable, Samples, kill_sample
from bench.rooms_memory import (
    anatomy,
    cpu_between,
    cpu_snapshot,
    forkserver_of,
    measure,
    median_room,
    threads,
)
from bench.rooms_report import Latency, Memory, Report, Result, num, render_json, render_table
from bench.rooms_stack import (
    Deployment,
    Stack,
    become_subreaper,
    deploy,
    enter_private_network,
    kill_leftovers,
    leftovers,
    require_root,
    start_stack,
    status,
    undeploy,
    warm,
)
from bench.rooms_timeline import cold_open, dispatched_twice, read_timeline, steps, unserved
from harness.livekit import binary
from harness.processes import WorkerProcess
from harness.servers import wait_until

STARTED = time.monotonic()
# A spawn room process holds its own copy of everything, the turn detector's weights too (measured ~320 MiB USS);
# a configuration that would push the machine into the OOM killer is skipped, and the report says so.
SPAWN_ROOM_MB = 340
MEMORY_RESERVE_GB = 3
QUIET_S = 5.0  # the window in which idle rooms' CPU is measured
OUR_IDLE = 4  # prewarmed room processes: a burst of 4 rooms finds a process ready; each idle one costs its USS

# The targets this worker is held to, on this 2-core box, at TARGET_ROOMS rooms.
TARGET_ROOMS = 50
ROOM_USS_MB = 30
ROOM_PSS_MB = 45
GREETING_P50_MS = 300
GREETING_P99_MS = 1000
RESUME_P50_MS = 2000


KEYS = ("ours", "defaults", "spawn", "metrics")
DEFAULT_KEYS = KEYS[:3]  # "metrics" is bench/metrics_overhead.py's
SCRAPE_EVERY_S = 2.0  # with metrics on: more often than Prometheus's usual 15 s, so its cost shows


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    baseline: str  # bench/worker.py's baseline ("" for ours): how the worker builds its AgentServer
    idle: int
    metrics: bool = False  # figures recorded and the exporter scraped every SCRAPE_EVERY_S


def configurations() -> list[Config]:
    from livekit.agents import AgentServer

    livekit_idle = AgentServer._default_num_idle_processes.prod_default  # the worker runs in prod mode
    return [
        Config("ours", f"forkserver, our modules preloaded, {OUR_IDLE} idle", "", OUR_IDLE),
        Config(
            "defaults",
            f"livekit-agents' defaults: forkserver, framework preloaded only, {livekit_idle} idle",
            "defaults",
            livekit_idle,
        ),
        Config("spawn", f"spawn, {OUR_IDLE} idle", "spawn", OUR_IDLE),
        Config(
            "metrics",
            f"ours with metrics on, the exporter scraped every {SCRAPE_EVERY_S:g} s",
            "",
            OUR_IDLE,
            metrics=True,
        ),
    ]


def progress(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {text}", file=sys.stderr, flush=True)


async def run(stack: Stack, plan: Plan, counts: list[int], keys: list[str], header: dict[str, str]) -> list[Result]:
    """Each room count, each configuration, one after the other (never two at once: they share two cores)."""
    opened = await cold_open(stack.base_settings("cold"), f"bench-{stack.tag}-cold")
    header["store start + open"] = (
        f"p50 {opened.p50_ms:.1f} ms, p99 {opened.p99_ms:.1f} ms ({opened.samples} cold starts in this process,"
        " as a room's process does once in the room)"
    )
    results = []
    for rooms in counts:
        for config in [c for c in configurations() if c.key in keys]:
            progress(f"{rooms} rooms, {config.key}: starting the worker ({config.label})")
            results.append(await run_configuration(stack, config, rooms, plan))
    return results


def too_big(config: Config, rooms: int) -> str:
    """Why this configuration would not fit in this machine's memory at ``rooms`` rooms ("" when it fits)."""
    if config.key != "spawn":
        return ""
    need = rooms * SPAWN_ROOM_MB / 1024 + MEMORY_RESERVE_GB
    available = psutil.virtual_memory().available / 2**30
    if need <= available:
        return ""
    return f"skipped: {rooms} spawn rooms need ~{need:.0f} GiB, {available:.0f} GiB available"


async def run_configuration(stack: Stack, config: Config, rooms: int, plan: Plan) -> Result:
    name = f"{config.key}{rooms}"
    skipped = too_big(config, rooms)
    if skipped:
        progress(f"{rooms} rooms, {config.key}: {skipped}")
        return result_of(config, rooms, plan, Samples(), None, {}, [], [], errors=[skipped])
    deployment = await asyncio.to_thread(
        deploy,
        stack,
        name,
        rooms=rooms,
        idle=config.idle,
        baseline=config.baseline,
        spare=plan.kills + 10,
        metrics=config.metrics,
    )
    load = Load(stack.livekit, plan)
    try:
        result = await measure_load(stack, deployment, load, config, rooms)
    finally:
        progress(f"{rooms} rooms, {config.key}: clean-up")
        await load.aclose()
        await asyncio.to_thread(undeploy, stack, deployment)
    result.seconds = time.monotonic() - deployment.started
    return result


async def measure_load(stack: Stack, deployment: Deployment, load: Load, config: Config, rooms: int) -> Result:
    """Warm up, run the rooms, measure memory with every room active, kill a sample. A phase that fails ends the
    configuration's run early; the result keeps what was measured and says why it stopped."""
    worker = deployment.worker
    exporter = deployment.exporter.pid if deployment.exporter else None
    parties = (worker.pid, stack.servers(), deployment.flusher.pid, exporter)
    scraper = asyncio.create_task(scrape_forever(deployment)) if deployment.exporter else None
    opened: list[Room] = []
    memory: Memory | None = None
    cpu: dict[str, float] = {}
    quiet: dict[str, float] = {}
    rows: list[tuple[str, float, float]] = []
    stopped = ""
    try:
        await Load(stack.livekit, load.plan).warm_up(f"bench-{stack.tag}-{config.key}-{rooms}-warm-up")
        # Measure with the warm-up room gone (its departure timeout) and its process replaced in the pool.
        await asyncio.to_thread(wait_until, lambda: not status(worker)["rooms"], 60, "the warm-up room closed")
        await asyncio.to_thread(wait_until, lambda: warm(worker, config.idle + 1), 60, "the pool refilled")
        before = cpu_snapshot(*parties)
        progress(f"{rooms} rooms, {config.key}: rooms arriving at {load.plan.arrival_per_s:g}/s, conversing")
        names = [f"bench-{stack.tag}-{config.key}-{rooms}-{i:03d}" for i in range(rooms)]
        opened = await load.run_rooms(names)
        cpu = cpu_between(before, cpu_snapshot(*parties))
        progress(f"{rooms} rooms, {config.key}: measuring memory")
        memory, rows = await measure_memory(stack, worker)
        quiet = await quiet_cpu(parties, QUIET_S)
        progress(f"{rooms} rooms, {config.key}: killing {load.plan.kills} room processes, one at a time")
        sample = kill_sample(opened, load.plan.kills)
        await load.kill_and_resume(sample, lambda room: kill_room(stack, deployment, room))
    except Exception as exc:  # a phase that could not finish: report what was measured, and why it stopped
        stopped = f"stopped early: {type(exc).__name__}: {exc}"
        progress(f"{rooms} rooms, {config.key}: {stopped}")
    finally:
        if scraper is not None:
            scraper.cancel()
    result = result_of(config, rooms, load.plan, load.samples, memory, cpu, rows, opened)
    timeline = read_timeline(deployment.timeline)
    result.steps = steps(opened, timeline)
    result.dispatched_twice = dispatched_twice(opened, timeline)
    causes = unserved(opened, timeline, worker.output())
    if causes:
        result.errors = [e for e in result.errors if "never greeted" not in e]
        missed = sum(not r.greeted for r in opened)
        result.errors.insert(0, f"{missed} of {rooms} rooms never greeted: " + "; ".join(causes))
    result.quiet_cpu_pct = quiet
    if stopped:
        result.errors.insert(0, stopped)
    progress(f"{rooms} rooms, {config.key}: {summary(result)}")
    return result


async def scrape_forever(deployment: Deployment) -> None:
    """Scrape the exporter as Prometheus does, every SCRAPE_EVERY_S, until cancelled."""
    while True:
        await asyncio.to_thread(deployment.scrape)
        await asyncio.sleep(SCRAPE_EVERY_S)


async def quiet_cpu(parties: tuple[int, dict[str, int], int, int | None], seconds: float) -> dict[str, float]:
    """Each party's CPU, in % of one core, while every room is connected and nobody speaks."""
    before = await asyncio.to_thread(cpu_snapshot, *parties)
    await asyncio.sleep(seconds)
    after = await asyncio.to_thread(cpu_snapshot, *parties)
    return {k: round(100 * v / seconds, 1) for k, v in cpu_between(before, after).items()}


async def measure_memory(stack: Stack, worker: WorkerProcess) -> tuple[Memory, list[tuple[str, float, float]]]:
    """Per-room figures from the worker's /status, the rest of its tree from psutil, one room's smaps."""
    rooms = (await asyncio.to_thread(status, worker))["rooms"]
    stack.remember_tree(worker.pid, "worker")
    memory = await asyncio.to_thread(measure, worker.pid, rooms, stack.servers()["postgres"])
    sample = median_room(rooms)
    rows = await asyncio.to_thread(anatomy, sample, forkserver_of(worker.pid)) if sample else []
    memory.room_threads = threads(sample) if sample else 0
    return memory, rows


def summary(r: Result) -> str:
    uss = r.memory.room_uss.median if r.memory else None
    return (
        f"greeting p50 {num(r.greeting.p50_ms)} ms p99 {num(r.greeting.p99_ms)} ms ({r.greeting.failed} lost), "
        f"reply p50 {num(r.reply.p50_ms)} ms, room USS {num(uss, '.1f')} MiB, back p50 {num(r.resume.p50_ms)} ms"
    )


async def kill_room(stack: Stack, deployment: Deployment, room: str) -> float:
    """SIGKILL the process serving ``room`` (checked to be one of the worker's); returns when, unix seconds."""
    worker = deployment.worker
    rooms = (await asyncio.to_thread(status, worker))["rooms"]
    pids = [int(r["pid"]) for r in rooms if r["room"] == room and r.get("pid")]
    family = {p.pid for p in await asyncio.to_thread(worker.descendants)}
    if len(pids) != 1 or pids[0] not in family:
        raise RoomNotKillable(f"the worker lists {len(pids)} processes serving it: {pids}")
    stack.remember(pids[0], f"room {room}")
    killed_at = time.time()
    os.kill(pids[0], signal.SIGKILL)
    return killed_at


def result_of(
    config: Config,
    rooms: int,
    plan: Plan,
    samples: Samples,
    memory: Memory | None,
    cpu: dict[str, float],
    rows: list[tuple[str, float, float]],
    opened: list[Room],
    errors: list[str] | None = None,
) -> Result:
    failed = samples.failed
    greeted = sum(r.greeted for r in opened)
    errors = errors or list(samples.errors)
    if opened and greeted < rooms:
        errors.insert(0, f"{rooms - greeted} of {rooms} rooms never greeted")
    return Result(
        key=config.key,
        label=config.label,
        rooms=rooms,
        messages=plan.messages,
        connect=Latency.of(samples.connect, failed["connect"]),
        agent_joined=Latency.of(samples.agent_joined),
        greeting=Latency.of(samples.greeting, failed["greeting"]),
        ack=Latency.of(samples.ack, failed["ack"]),
        reply=Latency.of(samples.reply, failed["reply"]),
        resume=Latency.of(samples.resume, failed["resume"]),
        memory=memory,
        cpu_s=cpu,
        seconds=0.0,
        anatomy=rows,
        errors=errors,
    )


def judge(report: Report) -> None:
    """Our configuration against the targets: at TARGET_ROOMS (or the largest count run), and which hold elsewhere."""
    ours = {r.rooms: r for r in report.results if r.key == "ours"}
    if not ours:
        return
    main = TARGET_ROOMS if TARGET_ROOMS in ours else max(ours)
    report.target_rooms = main
    report.targets = targets(ours[main])
    for rooms, result in sorted(ours.items()):
        if rooms != main:
            report.held_at[f"{rooms} rooms"] = [t.name for t in targets(result) if t.met]


def targets(r: Result) -> list[Target]:
    """The targets; MB as the worker's /status counts them (MiB)."""
    uss = r.memory.room_uss if r.memory else None
    pss = r.memory.room_pss if r.memory else None
    uss_median = uss.median if uss and uss.median is not None else math.inf
    pss_median = pss.median if pss and pss.median is not None else math.inf

    def ms(value: float | None) -> float:
        return math.inf if value is None else value

    greeting_p50, greeting_p99, resume_p50 = ms(r.greeting.p50_ms), ms(r.greeting.p99_ms), ms(r.resume.p50_ms)
    return [
        Target(
            f"room USS <= {ROOM_USS_MB} MB (median)",
            f"{uss_median:.1f} MiB (max {uss.max if uss else '-'})",
            uss_median <= ROOM_USS_MB,
        ),
        Target(
            f"room PSS <= {ROOM_PSS_MB} MB (median)",
            f"{pss_median:.1f} MiB (max {pss.max if pss else '-'})",
            pss_median <= ROOM_PSS_MB,
        ),
        Target(
            f"join -> greeting p50 <= {GREETING_P50_MS} ms",
            f"{greeting_p50:.0f} ms",
            greeting_p50 <= GREETING_P50_MS,
        ),
        Target(
            f"join -> greeting p99 <= {GREETING_P99_MS / 1000:g} s",
            f"{greeting_p99:.0f} ms",
            greeting_p99 <= GREETING_P99_MS,
        ),
        Target(
            f"kill -9 -> back p50 <= {RESUME_P50_MS / 1000:g} s",
            f"{resume_p50:.0f} ms",
            resume_p50 <= RESUME_P50_MS,
        ),
    ]


def describe(plan: Plan, counts: list[int]) -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    server = subprocess.run([str(binary()), "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "software": f"livekit-agents {version('livekit-agents')}, livekit (rtc) {version('livekit')}, "
        f"{server.strip() or 'livekit-server ?'}, python {platform.python_version()}",
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}",
        "load": f"rooms {','.join(map(str, counts))}; each: 2 participants x {plan.messages} lines, taking turns, "
        f"{plan.think_s:g} s pause before each line; rooms arrive at {plan.arrival_per_s:g}/s; "
        f"{plan.kills} kill -9 per configuration, one at a time",
        "clients": "every participant is a ChatClient (rtc.Room) in this one process",
        "worker": "offline model, job memory warn 300 MB / limit 500 MB (livekit monitor + RLIMIT_DATA), "
        "status from its /status endpoint (PSS, USS)",
        "network": "a private network namespace: loopback only",
    }


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BenchError(f"--rooms {text}: expected room counts separated by commas, e.g. 10,50") from None
    if not counts or min(counts) < 1:
        raise BenchError(f"--rooms {text}: every room count must be at least 1")
    return counts


class DataTrackNoise(logging.Filter):
    """livekit-server without ``enable_data_tracks`` (its default) closes the rtc SDK's '_data_track' channel, and
    the SDK logs an error for each connection; text streams use the other channels. Drop that one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'_data_track' closed unexpectedly" not in record.getMessage()


def raise_open_files() -> None:
    """Hundreds of peer connections in one process: as many descriptors as we may have."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def bench(counts: list[int], keys: list[str], plan: Plan, *, keep_logs: bool = False) -> Report:
    """Start everything, run, stop everything; the report says what was left running (nothing, or it failed)."""
    tag = uuid.uuid4().hex[:8]
    report = Report(describe(plan, counts), [])
    stack_ref: list[Stack] = []
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix="bench-rooms-"))
            if keep_logs:
                progress(f"logs kept in {workdir}")
            else:
                stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            enter_private_network(stack)
            progress("starting livekit-server, Redis and PostgreSQL in a private network namespace")
            stack_ref.append(start_stack(stack, workdir, tag))
            report.results = asyncio.run(run(stack_ref[0], plan, counts, keys, report.header))
    finally:
        if stack_ref:
            report.leftovers = leftovers(stack_ref[0])
            if report.leftovers:
                kill_leftovers(stack_ref[0])
    judge(report)
    report.wall_s = time.monotonic() - STARTED
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", default=None, help="room counts, comma-separated (default 10,50; --quick: 10)")
    parser.add_argument(
        "--messages", type=int, default=None, help=f"lines each participant sends (default {FULL.messages})"
    )
    parser.add_argument(
        "--think", type=float, default=None, help=f"seconds before each line (default {FULL.think_s:g})"
    )
    parser.add_argument(
        "--arrival", type=float, default=None, help=f"new rooms per second (default {FULL.arrival_per_s:g})"
    )
    parser.add_argument("--quick", action="store_true", help="10 rooms, fewer lines and kills: about 2 minutes")
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_KEYS),
        help=f"configurations to run, comma-separated, of {', '.join(KEYS)} (default {','.join(DEFAULT_KEYS)})",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' and workers' logs (says where)")
    args = parser.parse_args()
    try:
        require_root()
        plan = QUICK if args.quick else FULL
        if args.messages is not None:
            plan = replace(plan, messages=max(1, args.messages))
        if args.think is not None:
            plan = replace(plan, think_s=max(0.0, args.think))
        if args.arrival is not None:
            plan = replace(plan, arrival_per_s=max(0.1, args.arrival))
        counts = parse_counts(args.rooms or ("10" if args.quick else "10,50"))
        keys = [k.strip() for k in args.configs.split(",") if k.strip()]
        if not keys or set(keys) - set(KEYS):
            raise BenchError(f"--configs {args.configs}: choose among {', '.join(KEYS)}")
        become_subreaper()
        raise_open_files()
        logging.getLogger("livekit").addFilter(DataTrackNoise())
        report = bench(counts, keys, plan, keep_logs=args.keep_logs)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    progress("done")
    print(render_json(report) if args.json else render_table(report))
    if report.leftovers:
        print(f"error: processes left running after the clean-up: {', '.join(report.leftovers)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
