"""The rooms benchmark's figures: one Result per configuration and room count, the targets, and the two renderings
(a table for people, JSON for machines) of the same Report."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.figures import Target, quantile


@dataclass
class Latency:
    """Quantiles in milliseconds; a sample that never completed (a timeout) counts as infinitely slow."""

    samples: int
    failed: int
    p50_ms: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, seconds: Sequence[float], failed: int = 0) -> Latency:
        ordered = sorted([s * 1000 for s in seconds] + [math.inf] * failed)
        return cls(len(seconds), failed, quantile(ordered, 0.5), quantile(ordered, 0.99))


@dataclass
class Spread:
    """Median and maximum over the rooms, in MiB."""

    median: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), max(values)) if values else cls(None, None)


@dataclass
class Memory:
    """PSS and USS in MiB: per active room, and the totals of each kind of process in the worker's tree."""

    room_pss: Spread
    room_uss: Spread
    rooms: int  # active room processes measured
    idle: int  # room processes the worker lists under no room: prewarmed ones waiting, and closing ones
    idle_pss: float
    idle_uss: float | None  # median of one idle process: what a room process costs before it has a room
    worker_pss: float  # the worker itself, the forkserver and any other helper (not room processes)
    worker_uss: float
    total_pss: float  # everything in the worker's tree
    total_uss: float
    helpers: dict[str, float] = field(default_factory=dict)  # PSS of each non-room process, by name
    postgres_pss: float = 0.0  # the whole PostgreSQL tree: each room's store holds a connection (a backend)
    postgres_backends: int = 0
    room_threads: int = 0  # of the median room process


@dataclass
class Result:
    key: str  # configuration key: ours, defaults, spawn
    label: str
    rooms: int
    messages: int  # lines per participant
    connect: Latency  # the first participant's rtc.Room.connect
    agent_joined: Latency  # first participant joins -> the agent is in the room
    greeting: Latency  # first participant joins -> the greeting received
    ack: Latency  # send -> the line acknowledged (stored)
    reply: Latency  # send -> the reply that echoes the line
    resume: Latency  # kill -9 of the room's process -> "I'm back" received
    memory: Memory | None
    cpu_s: dict[str, float]  # CPU seconds of each party from the worker being ready to all rooms active
    seconds: float  # wall time of this configuration, worker start to worker gone
    dispatched_twice: int = 0  # rooms given a second agent process while the first was alive
    quiet_cpu_pct: dict[str, float] = field(default_factory=dict)  # % of a core with all rooms connected, silent
    anatomy: list[tuple[str, float, float]] = field(default_factory=list)  # (mapping kind, USS, PSS) of one room
    steps: list[tuple[str, Latency]] = field(default_factory=list)  # join -> greeting and kill -> back, by step
    errors: list[str] = field(default_factory=list)


@dataclass
class Report:
    header: dict[str, str]
    results: list[Result]
    targets: list[Target] = field(default_factory=list)  # ours, at target_rooms
    target_rooms: int = 0
    held_at: dict[str, list[str]] = field(default_factory=dict)  # other room counts: the targets met there
    wall_s: float = 0.0
    leftovers: list[str] = field(default_factory=list)  # processes still alive after the clean-up (must be none)


LABEL, COLUMN = 48, 18


def num(value: float | None, fmt: str = ".0f") -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else format(value, fmt)


def latency_rows(name: str, pick: Callable[[Result], Latency]) -> list[tuple[str, Callable[[Result], str]]]:
    def cell(r: Result, q: str) -> str:
        lat = pick(r)
        value = lat.p50_ms if q == "p50" else lat.p99_ms
        return num(value) + (f" ({lat.failed} lost)" if q == "p99" and lat.failed else "")

    return [(f"{name} p50 ms", lambda r: cell(r, "p50")), (f"{name} p99 ms", lambda r: cell(r, "p99"))]


def memory_cell(pick: Callable[[Memory], float | None], fmt: str = ".1f") -> Callable[[Result], str]:
    return lambda r: num(pick(r.memory), fmt) if r.memory else "-"


ROWS: list[tuple[str, Callable[[Result], str]]] = [
    *latency_rows("join -> greeting", lambda r: r.greeting),
    *latency_rows("  join (rtc connect)", lambda r: r.connect),
    *latency_rows("  join -> agent in the room", lambda r: r.agent_joined),
    *latency_rows("send -> ack (stored)", lambda r: r.ack),
    *latency_rows("send -> reply", lambda r: r.reply),
    *latency_rows('kill -9 -> "I\'m back"', lambda r: r.resume),
    ("  samples (kills)", lambda r: str(r.resume.samples + r.resume.failed)),
    ("rooms given two agents (before any kill)", lambda r: str(r.dispatched_twice)),
    ("room USS MiB, median", memory_cell(lambda m: m.room_uss.median)),
    ("room USS MiB, max", memory_cell(lambda m: m.room_uss.max)),
    ("room PSS MiB, median", memory_cell(lambda m: m.room_pss.median)),
    ("room PSS MiB, max", memory_cell(lambda m: m.room_pss.max)),
    ("threads of the median room process", lambda r: str(r.memory.room_threads) if r.memory else "-"),
    ("process without a room: USS MiB, median", memory_cell(lambda m: m.idle_uss)),
    (
        "processes without a room (PSS MiB, all)",
        lambda r: f"{r.memory.idle} ({r.memory.idle_pss:.0f})" if r.memory else "-",
    ),
    ("worker + forkserver PSS MiB", memory_cell(lambda m: m.worker_pss)),
    ("worker + forkserver USS MiB", memory_cell(lambda m: m.worker_uss)),
    ("total PSS MiB (worker tree)", memory_cell(lambda m: m.total_pss, ".0f")),
    ("total USS MiB (worker tree)", memory_cell(lambda m: m.total_uss, ".0f")),
    ("total PSS / room MiB", memory_cell(lambda m: m.total_pss / max(m.rooms, 1))),
    (
        "PostgreSQL PSS MiB (backends)",
        lambda r: f"{r.memory.postgres_pss:.0f} ({r.memory.postgres_backends})" if r.memory else "-",
    ),
    ("CPU s, worker tree", lambda r: num(r.cpu_s.get("worker"), ".1f")),
    ("CPU s, clients (this process)", lambda r: num(r.cpu_s.get("clients"), ".1f")),
    ("CPU s, livekit-server", lambda r: num(r.cpu_s.get("livekit"), ".1f")),
    ("CPU s, Redis + PostgreSQL + flusher", lambda r: num(r.cpu_s.get("stores"), ".1f")),
    ("CPU s, other programs on the machine", lambda r: num(r.cpu_s.get("others"), ".1f")),
    (
        "silent rooms: worker tree CPU % / room",
        lambda r: num(r.quiet_cpu_pct["worker"] / r.rooms, ".2f") if r.quiet_cpu_pct else "-",
    ),
    ("silent rooms: clients CPU % (all)", lambda r: num(r.quiet_cpu_pct.get("clients"), ".1f")),
    ("silent rooms: livekit-server CPU %", lambda r: num(r.quiet_cpu_pct.get("livekit"), ".1f")),
    ("silent rooms: other programs CPU %", lambda r: num(r.quiet_cpu_pct.get("others"), ".1f")),
    ("wall s of this configuration", lambda r: num(r.seconds, ".0f")),
]


def render_table(report: Report) -> str:
    lines = [f"{k}: {v}" for k, v in report.header.items()] + [""]
    for rooms in sorted({r.rooms for r in report.results}):
        results = [r for r in report.results if r.rooms == rooms]
        title = f"{rooms} rooms x 2 participants x {results[0].messages} lines"
        head = f"{title:<{LABEL}}" + "".join(f"{r.key:>{COLUMN}}" for r in results)
        lines += [head, "-" * len(head)]
        lines += [f"{name:<{LABEL}}" + "".join(f"{cell(r):>{COLUMN}}" for r in results) for name, cell in ROWS]
        lines += render_steps(results)
        lines += [f"  {r.key}: {error}" for r in results for error in r.errors] + [""]
    labels = {r.key: r.label for r in report.results}
    lines += ["configurations:"] + [f"  {key}: {label}" for key, label in labels.items()] + [""]
    lines += render_anatomy(report.results)
    lines += [f"targets (ours, at {report.target_rooms} rooms; MB as /status counts them, MiB):"]
    lines += [f"  [{'met' if t.met else 'NOT MET':>7}] {t.name:<52} {t.value}" for t in report.targets]
    for where, met in report.held_at.items():
        lines += [f"  held at {where}: " + ("; ".join(met) if met else "none")]
    lines += ["", f"wall time: {report.wall_s:.0f} s; processes left after the clean-up: {len(report.leftovers)}"]
    return "\n".join(lines)


def render_steps(results: list[Result]) -> list[str]:
    names = list(dict.fromkeys(name for r in results for name, _ in r.steps))
    if not names:
        return []
    by = [dict(r.steps) for r in results]

    def cell(lat: Latency | None) -> str:
        return f"{num(lat.p50_ms)} / {num(lat.p99_ms)}" if lat else "-"

    lines = ["", "step by step, p50 / p99 ms"]
    lines += [f"{name:<{LABEL}}" + "".join(f"{cell(b.get(name)):>{COLUMN}}" for b in by) for name in names]
    return lines


def render_anatomy(results: list[Result]) -> list[str]:
    """USS of the median room by kind of mapping, each configuration of the largest room count side by side."""
    largest = [r for r in results if r.rooms == max(x.rooms for x in results) and r.anatomy]
    if not largest:
        return []
    kinds = list(dict.fromkeys(kind for r in largest for kind, _, _ in r.anatomy))
    by = [{kind: uss for kind, uss, _ in r.anatomy} for r in largest]
    head = f"{f'USS MiB of the median room at {largest[0].rooms} rooms, by mapping':<58}" + "".join(
        f"{r.key:>10}" for r in largest
    )
    lines = [head, "-" * len(head)]
    lines += [f"{kind:<58}" + "".join(f"{b.get(kind, 0.0):>10.1f}" for b in by) for kind in kinds]
    lines += [f"{'total':<58}" + "".join(f"{sum(b.values()):>10.1f}" for b in by), ""]
    return lines


def finite(value: Any) -> Any:
    """JSON has no infinity: a figure that never completed is null (its ``failed`` count says why)."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def render_json(report: Report) -> str:
    return json.dumps(finite(asdict(report)), indent=2)
