"""``appliance uninstall [--purge] [--yes]``: stop the appliance and remove it; the data stays unless --purge."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli import App
    from appliance.settings import ApplianceSettings


@click.command()
@click.option("--purge", is_flag=True, help="Also delete the data (every conversation), the logs and the user.")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@click.pass_obj
def uninstall(app: App, *, purge: bool, yes: bool) -> None:
    """Stop the appliance and remove its programs, configs and systemd unit. Conversations, logs and the
    service user are kept unless --purge; Debian's own Redis and PostgreSQL services are left as install.sh
    found them."""
    from appliance.layout import Layout
    from appliance.uninstall import plan as make_plan
    from appliance.uninstall import uninstall as run
    from appliance.unit import worker_stopwaitsecs

    settings = _settings(app)
    plan = make_plan(settings, Layout.of(settings), purge=purge)
    if not yes:
        app.message("appliance uninstall will:")
        for line in plan.describe():
            app.message(f"  - {line}")
        click.confirm("Uninstall the appliance?", abort=True, err=True)
    # supervisord stops the worker last-in-first-out after its drain; the margin covers the stores' shutdown.
    timeout_s = worker_stopwaitsecs(settings.worker.drain_timeout_s) + 60
    run(plan, stop_timeout_s=timeout_s, progress=app.message)
    app.message("the appliance is uninstalled" + ("" if purge else "; its data is kept (--purge deletes it)"))


def _settings(app: App) -> ApplianceSettings:
    """The installed settings; a broken config must not keep an appliance from being removed: defaults then."""
    from agent.settings import SettingsError
    from appliance.settings import ApplianceSettings

    try:
        return app.settings
    except SettingsError as exc:
        app.message(f"warning: the configuration does not load ({exc.errors[0]}): using the default paths")
        return ApplianceSettings.model_construct()
