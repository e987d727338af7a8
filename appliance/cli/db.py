"""``appliance db``: the PostgreSQL schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli import App


@click.group()
def db() -> None:
    """Manage the PostgreSQL database."""


@db.command()
@click.pass_obj
def migrate(app: App) -> None:
    """Apply the schema migrations not applied yet; safe to rerun."""
    from appliance.stores import apply_migrations

    applied = apply_migrations(app.settings.postgres)
    if applied:
        app.render(applied, as_json=False)
    else:
        app.message("up to date")
