"""``appliance doctor``: preflight and runtime checks, one line each, every failure with its fix."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli import App


@click.command()
@click.pass_obj
def doctor(app: App) -> None:
    """Check the settings, secrets, binaries, ports, disk, supervisord, every program, Redis, PostgreSQL and
    LiveKit; print one line per check, and the fix for each failure.

    \b
    Exit codes:
      0  every check passed
      1  at least one failed
    """
    from agent.settings import config_path
    from appliance.doctor import doctor as run

    checks = run(config_path(os.environ), lambda: app.settings)
    for check in checks:
        click.echo(check.line())
    failures = sum(1 for check in checks if not check.ok)
    app.message(f"{failures} of {len(checks)} checks failed" if failures else f"all {len(checks)} checks passed")
    app.exit(1 if failures else 0)
