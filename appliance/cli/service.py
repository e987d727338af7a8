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
@click.option("--now", is_flag=True, help="Restart the worker hard: its rooms are cut, then resumed by the new worker.")
@click.pass_obj
def restart(app: App, *, programs: tuple[str, ...], now: bool) -> None:
    """Restart PROGRAMS; default: the flusher and the worker, which costs no participant anything.

    \b
    appliance restart           flusher (persisting pauses; nothing is lost) and worker, gracefully: a new
                                worker registers before the old one drains, so every room keeps its agent
    appliance restart worker    the worker alone, gracefully (--now: hard, rooms cut and resumed)
    appliance restart redis     rooms' messages go straight to PostgreSQL while Redis is down (slower);
                                nobody is dropped, nothing is lost
    appliance restart postgres  the flusher waits and catches up; rooms go on
    appliance restart livekit   drops every participant's connection (clients must reconnect)

    A changed setting is applied by `appliance reconfigure`, which restarts only the programs that read it.
    """
    from appliance import service
    from appliance.layout import Layout

    done = service.restart(app.settings, Layout.of(app.settings), programs, now=now, progress=app.message)
    app.message("restarted " + ", ".join(done))
