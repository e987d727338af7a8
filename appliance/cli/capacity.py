"""``appliance capacity``: how many rooms a box holds, from what a room costs here, and what a fleet costs."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.capacity import CostRow, Fit, RoomCost
    from appliance.cli import App


@click.command()
@click.option("--pss-mb", type=click.FloatRange(min=1), help="A room's memory (PSS, MB) instead of measuring it.")
@click.option(
    "--cpu-per-room", type=click.FloatRange(min=0), help="A room's CPU in cores (0.05 = 5 % of one) with --pss-mb."
)
@click.option("--worker-mb", type=click.FloatRange(min=0), default=0.0, help="The worker's own memory, with --pss-mb.")
@click.option(
    "--sample-s", type=click.FloatRange(min=1), default=10.0, show_default=True, help="Seconds of CPU measured."
)
@click.option("--json", "as_json", is_flag=True, help="Print the same figures as JSON.")
@click.pass_obj
def capacity(
    app: App, pss_mb: float | None, cpu_per_room: float | None, worker_mb: float, sample_s: float, as_json: bool
) -> None:
    """Rooms per worker box (8 vCPU/16 GB and 16 vCPU/32 GB) and the design note's cost table, from the PSS and
    CPU a room costs: measured on the rooms open on this box now (a box under its usual load), or given."""
    from appliance import capacity as sizing

    if pss_mb is None:
        if cpu_per_room is not None:
            raise click.UsageError("--cpu-per-room goes with --pss-mb (without them both are measured)")
        cost = _measured(app, sample_s)
    else:
        cost = sizing.RoomCost(pss_mb, cpu_per_room or 0.0, worker_mb, "given")
    figures = sizing.report(cost)
    if as_json:
        app.render(figures, as_json=True)
        return
    fits = [sizing.fit(box, cost) for box in (sizing.SMALL, sizing.LARGE)]
    for line in _human(cost, fits, sizing.cost_table(cost)):
        click.echo(line)


def _measured(app: App, sample_s: float) -> RoomCost:
    from appliance import capacity as sizing
    from appliance.errors import ApplianceError
    from appliance.layout import Layout
    from appliance.status import collect

    settings = app.settings
    report = collect(settings, Layout.of(settings))
    rooms = [(r.pid, r.pss_mb) for w in report.workers for r in w.rooms if r.pid and r.pss_mb]
    trees = {p.name: p.pss_mb or 0.0 for p in report.programs}
    worker_mb = sum(trees.get(w.program, 0.0) for w in report.workers) - sum(pss for _, pss in rooms)
    try:
        return sizing.measure(rooms, max(0.0, worker_mb), sample_s)
    except ValueError as exc:
        raise ApplianceError(str(exc)) from None


def _human(cost: RoomCost, fits: list[Fit], rows: list[CostRow]) -> list[str]:
    cpu = f"{cost.cpu_cores:.3f} cores" if cost.cpu_cores else "CPU not counted"
    lines = [f"a room: {cost.pss_mb:.1f} MB PSS, {cpu}; the worker {cost.worker_mb:.0f} MB ({cost.measured})", ""]
    lines.append(f"{'WORKER BOX':<17} {'ROOMS':>6} {'BY MEMORY':>10} {'BY CPU':>7}  BOUND BY")
    for f in fits:
        by_cpu = "-" if f.by_cpu is None else str(f.by_cpu)
        lines.append(f"{f.box:<17} {f.rooms:>6} {f.by_memory:>10} {by_cpu:>7}  {f.bound_by}")
    lines += ["", f"{'CONCURRENT':>10}  {'BOXES':<22} {'$/MONTH':>10} {'$/ROOM':>9} {'NOTE $':>9}"]
    for row in rows:
        if math.isinf(row.total):
            lines.append(f"{row.rooms:>10}  a {row.box} box holds no room")
            continue
        lines.append(
            f"{row.rooms:>10}  {row.boxes} x {row.box:<17} {row.total:>10,.0f} {row.per_room:>9.2f}"
            f" {row.note_total:>9,.0f}"
        )
    lines.append("(prices and the stores' line items are the design note's; rooms per box from the figures above)")
    return lines
