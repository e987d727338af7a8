"""``appliance db``: the PostgreSQL schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    import psycopg

    from agent.settings import PostgresSettings
    from appliance.cli import App


@click.group()
def db() -> None:
    """Manage the PostgreSQL database."""


@db.command()
@click.pass_obj
def migrate(app: App) -> None:
    """Apply the schema migrations not applied yet; safe to rerun."""
    applied = apply_migrations(app.settings.postgres)
    if applied:
        app.render(applied, as_json=False)
    else:
        app.message("up to date")


def apply_migrations(pg: PostgresSettings) -> list[str]:
    """Names of the migrations applied now (empty when the schema was up to date)."""
    from agent.store.migrate import migrate

    with connect(pg) as conn:
        return migrate(conn)


def connect(pg: PostgresSettings) -> psycopg.Connection[tuple[object, ...]]:
    """A connection, or an ApplianceError naming the server and the fix, never the password."""
    import psycopg

    password = None if pg.password is None else pg.password.get_secret_value()
    try:
        # The password goes as its own argument: conninfo() is safe to log, and stays so.
        return psycopg.connect(pg.conninfo(), password=password, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = _reason(exc, password)
        if "password" in reason or "authentication" in reason:
            fix = "check postgres.user and the postgres.password secret"
        else:
            fix = "is PostgreSQL running? check postgres.host and postgres.port"
        raise ApplianceError(f"cannot connect to PostgreSQL at {pg.host}:{pg.port} ({reason}): {fix}") from None


def _reason(exc: Exception, password: str | None) -> str:
    """libpq's own reason, without its preamble: 'connection to server at ... failed: Connection refused'."""
    lines = [line.strip() for line in str(exc).splitlines() if "failed:" in line] or [str(exc).strip()]
    reason = lines[-1].rsplit("failed:", 1)[-1].strip().removeprefix("FATAL:").strip() or type(exc).__name__
    # libpq does not echo passwords; this guards against a future message that does.
    return reason.replace(password, "**********") if password else reason
