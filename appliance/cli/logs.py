"""``appliance logs [PROGRAM] [-f] [-n N] [--since WHEN]``: the programs' lines, from the journal or the files."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from appliance.cli import App


@click.command()
@click.argument("program", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as they are written (Ctrl-C stops).")
@click.option("-n", "--lines", type=click.IntRange(min=0), help="Only the last N lines (with -f: 10 by default).")
@click.option(
    "--since",
    metavar="WHEN",
    help='Only lines written since WHEN: "2024-05-01 12:30", "12:30", "today", "yesterday", "-15m", "2 hours ago".',
)
@click.pass_obj
def logs(app: App, program: str | None, *, follow: bool, lines: int | None, since: str | None) -> None:
    """Print the lines of PROGRAM (supervisord, redis, postgres, livekit, metrics, flusher or worker), or of all.

    They come from the journal when the appliance logs there ([logging] journal), else from the files in
    control.log_dir, merged by time and each line named by its program.
    """
    from appliance.logs import check_program, journal_command, parse_since, use_journal

    name = check_program(program)
    start = parse_since(since) if since else None
    settings = app.settings
    if use_journal(settings.logging.journal):
        argv = journal_command(name, follow=follow, lines=lines, since=start)
        sys.stdout.flush()
        try:
            os.execv(argv[0], argv)
        except OSError as exc:
            from appliance.errors import ApplianceError

            raise ApplianceError(f"cannot run journalctl ({exc.strerror}): install systemd's journalctl") from None
    _files(app, settings.control.log_dir, name, follow=follow, lines=lines, since=start)


def _files(
    app: App, log_dir: Path, name: str | None, *, follow: bool, lines: int | None, since: datetime | None
) -> None:
    from appliance.errors import ApplianceError
    from appliance.logs import Follower, read_files

    if not log_dir.is_dir():
        raise ApplianceError(f"{log_dir} does not exist: is the appliance installed? (control.log_dir)")
    try:
        # Watching starts before the last lines are read: a line written in between is not lost.
        follower = Follower(log_dir, name) if follow else None
        found = read_files(log_dir, name, lines=10 if lines is None and follow else lines, since=since)
    except PermissionError as exc:
        raise ApplianceError(f"cannot read {exc.filename}: permission denied; run as root (sudo)") from None
    for path in found.untimed:
        app.message(f"note: the lines of {path} carry no time: all of them are shown, whatever --since says")
    if name is not None and name in found.missing:
        app.message(f"no log of {name} in {log_dir} yet: it has not run here")
    for line in found.lines:
        click.echo(line)
    if follower is None:
        return
    try:
        for line in follower.follow():
            click.echo(line)
    except KeyboardInterrupt:
        pass
