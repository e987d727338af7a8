"""``appliance status``: what runs, how much memory it takes, how the stores are, and one verdict."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli import App
    from appliance.status import Report


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the same data as JSON.")
@click.option("--watch", is_flag=True, help="Show it again every --interval seconds, in place, until Ctrl-C.")
@click.option(
    "--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True, help="Seconds between refreshes."
)
@click.pass_obj
def status(app: App, *, as_json: bool, watch: bool, interval: float) -> None:
    """Show every program, the workers' rooms, Redis, PostgreSQL and the flusher, with a one-line verdict.

    \b
    Exit codes:
      0  healthy
      1  degraded: running, but something is wrong (a program not RUNNING or crash-looping,
         Redis near its memory cap, the flusher lagging, no worker registered with LiveKit, ...)
      3  not running: supervisord's socket is absent or refuses connections
      4  unknown: supervisord answers wrongly, permission denied, or the settings cannot be read
    """
    from agent.settings import SettingsError
    from appliance.layout import Layout
    from appliance.status import UNKNOWN, collect

    try:
        settings = app.settings
    except SettingsError as exc:
        for line in exc.errors:
            app.message(f"unknown: {line}")
        app.exit(UNKNOWN)
    layout = Layout.of(settings)
    if watch:
        if as_json:
            raise click.UsageError("--watch shows the human view; for JSON, run --json repeatedly")
        _watch(lambda: human(collect(settings, layout)), interval)
        app.exit(0)
    report = collect(settings, layout)
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        for line in human(report):
            click.echo(line)
    app.exit(report.exit_code)


# How many rooms a worker's table shows, the largest first (`--json` has them all).
TOP_ROOMS = 5


def human(report: Report) -> list[str]:
    """A compact view: the verdict, a table of programs, each worker's rooms, one line per store."""
    lines = [report.verdict]
    for problem in report.problems[1:]:
        lines.append(f"  also: {problem}")
    if report.programs:
        # PSS covers the program's process and its descendants (PROCS of them): a worker's rooms, Postgres backends.
        rows: list[tuple[str, ...]] = [("PROGRAM", "STATE", "PID", "UPTIME", "PSS MB", "PROCS", "RESTARTS", "")]
        for p in report.programs:
            restarts = "?" if p.restarts is None else str(p.restarts)
            rows.append(
                (
                    p.name,
                    p.state,
                    _opt(p.pid),
                    _duration(p.uptime_s),
                    _opt(p.pss_mb),
                    str(p.processes) if p.processes else "-",
                    restarts,
                    "CRASH-LOOP" if p.crash_loop else "",
                )
            )
        lines += ["", *_table(rows)]
    for w in report.workers:
        lines.append("")
        if not w.ok:
            lines.append(f"{w.program} (status on :{w.port}): no answer: {w.error}")
            continue
        registration = f"registered as {w.worker_id}" if w.registered else "NOT registered"
        lines.append(
            f"{w.program} (status on :{w.port}): {registration}{', draining' if w.draining else ''},"
            f" {len(w.rooms)} room{'s' if len(w.rooms) != 1 else ''}"
        )
        if w.rooms:
            # The largest rooms first, the top TOP_ROOMS of them; the rest summed in one line.
            by_size = sorted(w.rooms, key=lambda r: r.pss_mb or 0, reverse=True)
            shown, rest = by_size[:TOP_ROOMS], by_size[TOP_ROOMS:]
            room_rows: list[tuple[str, ...]] = [("ROOM", "CONVERSATION", "PID", "PSS MB", "USS MB")]
            room_rows += [(r.room, r.conversation or "-", _opt(r.pid), _opt(r.pss_mb), _opt(r.uss_mb)) for r in shown]
            lines += ["  " + line for line in _table(room_rows)]
            if rest:
                total = sum(r.pss_mb or 0 for r in rest)
                lines.append(f"  and {len(rest)} more room{'s' if len(rest) != 1 else ''}, {total:.1f} MB PSS in all")
    lines.append("")
    r = report.redis
    if r.ok:
        cap = f"of {r.maxmemory_mb:.0f} MB ({r.used_ratio:.0%})" if r.maxmemory_mb and r.used_ratio is not None else ""
        lines.append(
            f"redis:    {r.used_mb} MB used {cap or '(no cap)'}, {r.evicted_keys} evicted keys,"
            f" stream backlog {r.stream_length} ({r.pending} pending)"
        )
    else:
        lines.append(f"redis:    DOWN: {r.error}")
    pg = report.postgres
    if pg.ok:
        lines.append(f"postgres: up, {pg.size_mb} MB, {pg.connections} of {pg.max_connections} connections")
    else:
        lines.append(f"postgres: DOWN: {pg.error}")
    f = report.flusher
    if f.ok:
        lag = "?" if f.lag_ms is None else f"{f.lag_ms:.0f} ms"
        lines.append(
            f"flusher:  lag {lag}, backlog {_opt(f.backlog)}, {_opt(f.persisted)} persisted,"
            f" {_opt(f.errors)} errors, {_opt(f.spool_files)} spool files"
        )
    else:
        lines.append(f"flusher:  {f.error}")
    lk = report.livekit
    if lk is not None:
        lines.append(
            f"livekit:  up at {lk.url} ({lk.latency_ms} ms)" if lk.ok else f"livekit:  DOWN at {lk.url}: {lk.error}"
        )
    if report.agent:
        lines.append(f"agent:    {report.agent}")
    lines += _latency_lines(report.latency)
    return lines


def _latency_lines(latency: dict[str, dict[str, float | None]]) -> list[str]:
    """One line per latency observed at least once: its 50th, 95th and 99th percentiles, in milliseconds."""
    rows: list[tuple[str, ...]] = [("LATENCY", "COUNT", "P50 MS", "P95 MS", "P99 MS")]
    for name, figures in latency.items():
        if figures.get("count"):
            quantiles = (figures.get(q) for q in ("p50", "p95", "p99"))
            rows.append(
                (name, f"{figures['count']:.0f}", *("-" if v is None else f"{v * 1000:.1f}" for v in quantiles))
            )
    if len(rows) == 1:
        return []
    return ["", "latency since each program started (from the exporter's histograms):", *_table(rows)]


def frame(lines: list[str]) -> str:
    """One refresh of --watch: from the top-left corner, each line over the one before, the rest cleared. Nothing
    is erased first, so nothing flickers."""
    return "\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J"


def _watch(render: Callable[[], list[str]], interval: float) -> None:
    """Refresh until Ctrl-C (or SIGTERM), which ends it quietly."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        click.echo("\x1b[2J", nl=False)
        while True:
            started = time.monotonic()
            click.echo(frame([*render(), "", f"every {interval:g} s; Ctrl-C ends"]), nl=False)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        click.echo("")


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
