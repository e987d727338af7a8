"""``appliance start|stop|restart``: supervisord and its programs (through systemd where it runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli import App


@click.command()
@click.pass_obj
def start(app: App) -> None:
    """Start the appliance (systemd's unit, or supervisord in the background where systemd is not PID 1)."""
    from appliance import service
    from appliance.layout import Layout

    started = service.start(app.settings, Layout.of(app.settings))
    app.message("started" if started else "already running")


@click.command()
@click.pass_obj
def stop(app: App) -> None:
    """Stop every program gracefully (the worker drains its rooms first), then supervisord."""
    from appliance import service
    from appliance.layout import Layout

    stopped = service.stop(app.settings, Layout.of(app.settings))
    app.message("stopped" if stopped else "not running")


@click.command()
@click.argument("programs", nargs=-1)
@click.option("--now", is_flag=True, help="Restart hard: the worker's rooms are cut and resumed by a new worker.")
@click.pass_obj
def restart(app: App, *, programs: tuple[str, ...], now: bool) -> None:
    """Restart PROGRAMS (default: every one), gracefully: a new worker registers before the old one drains,
    so every room keeps an agent."""
    from appliance import service
    from appliance.layout import Layout

    done = service.restart(app.settings, Layout.of(app.settings), programs, now=now, progress=app.message)
    app.message("restarted " + ", ".join(done))
