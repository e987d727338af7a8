"""``appliance backup [FILE]`` and ``appliance restore FILE``: the data and the config in one file, and back."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli import App


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_obj
def backup(app: App, file: Path | None, *, as_json: bool) -> None:
    """Back up the data and the config into one file.

    FILE (default: appliance-backup-<time>.tar.gz here) is a tar.gz of mode 0600, since it holds the secrets: a
    PostgreSQL dump, the appliance's Redis keys, the spool, the config files and a manifest. Safe while the
    appliance runs."""
    from appliance.backup import ConfigFiles, default_name, make_backup

    made = make_backup(app.settings, ConfigFiles.of(os.environ), file or default_name(), progress=app.message)
    app.render(made.as_dict(), as_json=as_json)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--config",
    "with_config",
    is_flag=True,
    help="Also put back the backup's appliance.toml and secrets.toml (keeping this install's Redis and PostgreSQL"
    " passwords); run `appliance reconfigure` afterwards.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was restored as JSON.")
@click.pass_obj
def restore(app: App, file: Path, *, yes: bool, with_config: bool, as_json: bool) -> None:
    """Restore a backup made by `appliance backup`.

    Replaces this appliance's data (its PostgreSQL database, its Redis keys, the spool, and the bundled
    Prometheus's history when the backup has it) with FILE's. The file is checked whole first; the workers and the
    flusher (then Prometheus) are stopped meanwhile and started again after."""
    from appliance.backup import ConfigFiles, read_manifest
    from appliance.layout import Layout
    from appliance.restore import restore as restore_backup
    from appliance.supervisor import Supervisor

    manifest = read_manifest(file)  # a file that is not ours is refused before anything is asked
    settings = app.settings
    if not yes:
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(manifest.created_at))
        what = "data and config" if with_config else "data"
        click.confirm(
            f"Replace this appliance's {what} (database {settings.postgres.dbname}, Redis keys under"
            f" {settings.store.key_prefix!r}, the spool{', the metrics history' if manifest.prometheus_files else ''})"
            f" with the backup made on {manifest.hostname} at {made}?",
            abort=True,
            err=True,
        )
    supervisor = Supervisor(Layout.of(settings).supervisor_socket)
    done = restore_backup(
        settings,
        ConfigFiles.of(os.environ),
        file,
        with_config=with_config,
        supervisor=supervisor,
        progress=app.message,
    )
    app.render(done.as_dict(), as_json=as_json)
    if done.config_files:
        app.message("config restored: run `appliance reconfigure` to apply it")
