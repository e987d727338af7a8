"""What metrics cost the rooms: the rooms benchmark's load with metrics off and on, alternating, in one run.

    sudo python -m bench.metrics_overhead [--runs 3] [--rooms 10] [--json]

Each run deploys a fresh worker and flusher (bench/rooms.py's "ours"; "metrics" adds what [metrics] on adds: each
process records its figures in files, and the exporter serves them with the status report, scraped every 2 s) and
runs N rooms x 2 participants. Off and on alternate, so a drift of the machine touches both alike. Per run: the
CPU seconds of the worker's tree (the worker and every room process) per room while the rooms converse, the
median PSS of a room process, the exporter's own CPU, and the greeting's p50.

The verdict, for CPU and PSS per room: |median(on) - median(off)| <= max(spread of the off runs, 2 % of their
median). Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from bench.environment import BenchError
from bench.rooms import DataTrackNoise, configurations, progress, raise_open_files, run_configuration
from bench.rooms_load import QUICK
from bench.rooms_report import Result
from bench.rooms_stack import (
    Stack,
    become_subreaper,
    enter_private_network,
    kill_leftovers,
    leftovers,
    require_root,
    start_stack,
)

ALLOWED_PCT = 2.0


@dataclass(frozen=True)
class Run:
    metrics: bool
    cpu_per_room_s: float
    pss_per_room_mb: float
    exporter_cpu_s: float
    greeting_p50_ms: float | None
    errors: list[str]


@dataclass(frozen=True)
class Verdict:
    figure: str
    off_median: float
    on_median: float
    off_spread: float
    allowed: float

    @property
    def delta(self) -> float:
        return self.on_median - self.off_median

    @property
    def holds(self) -> bool:
        return abs(self.delta) <= self.allowed


def run_of(result: Result, metrics: bool) -> Run:
    pss = result.memory.room_pss.median if result.memory else None
    if pss is None or not result.cpu_s:
        raise BenchError(f"a run with metrics {'on' if metrics else 'off'} measured nothing: {result.errors}")
    return Run(
        metrics=metrics,
        cpu_per_room_s=result.cpu_s["worker"] / result.rooms,
        pss_per_room_mb=pss,
        exporter_cpu_s=result.cpu_s.get("exporter", 0.0),
        greeting_p50_ms=result.greeting.p50_ms,
        errors=result.errors,
    )


def verdict(figure: str, off: list[float], on: list[float]) -> Verdict:
    """Within the off runs' own spread, or ALLOWED_PCT of their median, whichever is larger."""
    median = statistics.median(off)
    spread = max(off) - min(off)
    return Verdict(figure, median, statistics.median(on), spread, max(spread, median * ALLOWED_PCT / 100))


async def alternate(rooms: int, runs: int) -> list[Run]:
    configs = {c.key: c for c in configurations()}
    plan = replace(QUICK, kills=0)  # the load alone: a crash's re-dispatch is not what is measured here
    done: list[Run] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    servers: list[Stack] = []
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            enter_private_network(stack)
            progress("starting livekit-server, Redis and PostgreSQL in a private network namespace")
            servers.append(start_stack(stack, workdir, uuid.uuid4().hex[:8]))
            for n in range(runs):
                for key in ("ours", "metrics"):
                    progress(f"run {n + 1} of {runs}, metrics {'on' if key == 'metrics' else 'off'}")
                    config = replace(configs[key], key=f"{key}{n}")
                    done.append(run_of(await run_configuration(servers[0], config, rooms, plan), key == "metrics"))
    finally:  # as bench.rooms does: once the servers are stopped, nothing of this run may be left
        left = leftovers(servers[0]) if servers else []
        if left:
            kill_leftovers(servers[0])
            raise BenchError(f"processes left running after the clean-up: {', '.join(left)}")
    return done


def render(runs: list[Run], verdicts: list[Verdict], rooms: int) -> str:
    lines = [f"{rooms} rooms x 2 participants per run; metrics off and on alternating", ""]
    lines.append(f"{'run':<4} {'metrics':<8} {'CPU s/room':>11} {'PSS MiB/room':>13} {'exporter CPU s':>15} "
                 f"{'greeting p50 ms':>16}")  # fmt: skip
    for n, run in enumerate(runs):
        p50 = "-" if run.greeting_p50_ms is None else f"{run.greeting_p50_ms:.0f}"
        lines.append(
            f"{n // 2 + 1:<4} {'on' if run.metrics else 'off':<8} {run.cpu_per_room_s:>11.3f} "
            f"{run.pss_per_room_mb:>13.2f} {run.exporter_cpu_s:>15.2f} {p50:>16}"
        )
    lines.append("")
    for v in verdicts:
        ratio = v.on_median / v.off_median if v.off_median else float("nan")
        lines.append(
            f"{v.figure}: off median {v.off_median:.3f}, on median {v.on_median:.3f} (ratio {ratio:.3f}, "
            f"{v.delta:+.3f}); allowed +/-{v.allowed:.3f} (off spread {v.off_spread:.3f}, {ALLOWED_PCT:g} % of "
            f"the median {v.off_median * ALLOWED_PCT / 100:.3f}): {'holds' if v.holds else 'DOES NOT HOLD'}"
        )
    for run in runs:
        lines += [f"error ({'on' if run.metrics else 'off'}): {e}" for e in run.errors]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each, alternating (default 3, at least 3)")
    parser.add_argument("--rooms", type=int, default=10, help="rooms per run (default 10)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args()
    try:
        require_root()
        if args.runs < 3:
            raise BenchError(f"--runs {args.runs}: at least 3 of each, for a spread to compare with")
        if args.rooms < 1:
            raise BenchError(f"--rooms {args.rooms}: at least 1")
        become_subreaper()
        raise_open_files()
        logging.getLogger("livekit").addFilter(DataTrackNoise())
        runs = asyncio.run(alternate(args.rooms, args.runs))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    off, on = [r for r in runs if not r.metrics], [r for r in runs if r.metrics]
    verdicts = [
        verdict("CPU s per room", [r.cpu_per_room_s for r in off], [r.cpu_per_room_s for r in on]),
        verdict("PSS MiB per room", [r.pss_per_room_mb for r in off], [r.pss_per_room_mb for r in on]),
    ]
    if args.json:
        print(json.dumps({"runs": [r.__dict__ for r in runs],
                          "verdicts": [v.__dict__ | {"holds": v.holds} for v in verdicts]}, indent=2))  # fmt: skip
    else:
        print(render(runs, verdicts, args.rooms))
    progress("done")


if __name__ == "__main__":
    main()
