"""``appliance config``: show the effective settings and check them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from appliance.cli import App
    from appliance.settings import ApplianceSettings


@click.group()
def config() -> None:
    """Show and check the settings (config file, secrets file, environment)."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@click.pass_obj
def show(app: App, *, as_json: bool) -> None:
    """Print the effective settings, secrets masked."""
    app.render(effective(app.settings), as_json=as_json)


@config.command()
@click.pass_obj
def validate(app: App) -> None:
    """Load the settings as every command does; exit 1 with one line per problem."""
    from agent.settings import config_path

    path = config_path(os.environ)
    _ = app.settings  # loading is the check; a SettingsError reaches the root group's handler
    app.message(f"ok: {path}" if path.exists() else f"ok: {path} (not found: defaults and environment only)")


def effective(settings: ApplianceSettings) -> dict[str, Any]:
    """The settings as plain data; pydantic's JSON mode masks every secret, and an unset one stays None."""
    return settings.model_dump(mode="json")
