"""``appliance install`` and ``appliance reconfigure``: one idempotent path that brings the box to its settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

if TYPE_CHECKING:
    from appliance.cli import App


@click.command()
@click.option(
    "--role", type=click.Choice(["all", "worker"]), help="all: the whole appliance; worker: flusher and worker only."
)
@click.option("--redis-url", help="A shared Redis, redis[s]://[user@]host:port[/db] (rediss: TLS); no password in it.")
@click.option("--redis-password-file", type=click.File("r", encoding="utf-8"), help="A file holding its password.")
@click.option(
    "--redis-ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The CA its TLS certificate is checked against (default: the system's).",
)
@click.option(
    "--postgres-dsn",
    help="A shared PostgreSQL, a libpq DSN (sslmode=verify-full sslrootcert=... for one elsewhere); no password.",
)
@click.option("--postgres-password-file", type=click.File("r", encoding="utf-8"), help="A file holding its password.")
@click.option("--livekit-url", help="Use this external LiveKit (ws(s):// or http(s)://) instead of the bundled one.")
@click.option("--livekit-api-key", help="The external LiveKit's API key.")
@click.option(
    "--livekit-api-secret-file",
    type=click.File("r", encoding="utf-8"),
    help="A file holding the external LiveKit's API secret, '-' for standard input (stored in secrets.toml).",
)
@click.option(
    "--livekit-server-bin",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A livekit-server binary to install as the bundled LiveKit.",
)
@click.option(
    "--livekit-client-tgz",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="livekit-client's npm tarball for the console (else downloaded); checked against its locked sha512.",
)
@click.option("--node-ip", help="The address clients reach the bundled LiveKit at.")
@click.option("--domain", help="The public name of the bundled LiveKit (TLS in front, see README).")
@click.option("--yes", is_flag=True, help="Do not ask; for scripts.")
@click.option("--host", is_flag=True, hidden=True, help="install.sh's handover: set up the box too.")
@click.pass_obj
def install(
    app: App,
    *,
    role: str | None,
    redis_url: str | None,
    redis_password_file: TextIO | None,
    redis_ca_file: Path | None,
    postgres_dsn: str | None,
    postgres_password_file: TextIO | None,
    livekit_url: str | None,
    livekit_api_key: str | None,
    livekit_api_secret_file: TextIO | None,
    livekit_server_bin: Path | None,
    livekit_client_tgz: Path | None,
    node_ip: str | None,
    domain: str | None,
    yes: bool,
    host: bool,
) -> None:
    """Install or update the appliance: user, directories, secrets, configs, supervisord, database; then start
    it and wait until it is healthy. Safe to rerun: a second run changes and restarts nothing."""
    from agent.settings import config_path
    from appliance.host import Host
    from appliance.install import InstallOptions
    from appliance.store_urls import postgres_settings, redis_settings

    try:
        redis = redis_settings(redis_url) if redis_url else {}
        postgres = postgres_settings(postgres_dsn) if postgres_dsn else {}
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if redis_ca_file:
        if not redis.get("tls"):
            raise click.UsageError("--redis-ca-file goes with a rediss:// --redis-url")
        redis["tls_ca_file"] = redis_ca_file.resolve()
    if (redis_password_file and not redis_url) or (postgres_password_file and not postgres_dsn):
        raise click.UsageError("--redis-password-file/--postgres-password-file go with --redis-url/--postgres-dsn")
    if livekit_url and not (livekit_api_key and livekit_api_secret_file):
        raise click.UsageError("--livekit-url needs --livekit-api-key and --livekit-api-secret-file")
    if (livekit_api_key or livekit_api_secret_file) and not livekit_url:
        raise click.UsageError("--livekit-api-key/--livekit-api-secret-file go with --livekit-url")
    livekit_api_secret = (
        _read_secret(livekit_api_secret_file, "--livekit-api-secret-file") if livekit_api_secret_file else None
    )
    if os.geteuid() != 0:
        raise click.UsageError("run as root (or with sudo): it creates a user and system files")
    if not yes and not click.confirm(f"Install the appliance (config {config_path(os.environ)})?", default=True):
        app.exit(1)
    options = InstallOptions(
        config_file=config_path(os.environ),
        role=role,
        redis=redis,
        redis_password=_read_secret(redis_password_file, "--redis-password-file") if redis_password_file else None,
        postgres=postgres,
        postgres_password=(
            _read_secret(postgres_password_file, "--postgres-password-file") if postgres_password_file else None
        ),
        livekit_url=livekit_url,
        livekit_api_key=livekit_api_key,
        livekit_api_secret=livekit_api_secret,
        livekit_server_bin=livekit_server_bin,
        livekit_client_tgz=livekit_client_tgz,
        node_ip=node_ip,
        domain=domain,
        host=Host.from_environment() if host else None,
    )
    _run(app, options)


@click.command()
@click.pass_obj
def reconfigure(app: App) -> None:
    """Apply edited settings and recompute what depends on this box (PostgreSQL memory, the unit's limits);
    restarts only the programs whose inputs changed (the worker gracefully)."""
    from agent.settings import config_path
    from appliance.install import InstallOptions

    if os.geteuid() != 0:
        raise click.UsageError("run as root (or with sudo)")
    _run(app, InstallOptions(config_file=config_path(os.environ)))


@click.command()
@click.pass_obj
def run(app: App) -> None:
    """For a container (its init runs this): set the appliance up as install does, secrets made on first start,
    then become supervisord in the foreground; SIGTERM drains the worker and exits 0."""
    from agent.settings import config_path
    from appliance.container import run as run_in_foreground

    if os.geteuid() != 0:
        raise click.UsageError("run as root: it prepares the data volume, then runs as the service user")

    def report(outcome: str, what: str) -> None:
        app.message(f"  {outcome:<10} {what}")

    run_in_foreground(config_path(os.environ), report)


def _read_secret(source: TextIO, option: str) -> str:
    """The secret a file holds, without its trailing newline: a secret never goes on a command line, where every
    local user can read it (/proc/*/cmdline) and the shell's history keeps it."""
    try:
        secret = source.read().removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {source.name}: {type(exc).__name__}", param_hint=option) from None
    if not secret:
        raise click.BadParameter(f"{source.name} is empty", param_hint=option)
    return secret


def _run(app: App, options: object) -> None:
    import time

    from appliance.install import InstallOptions, install, summary

    assert isinstance(options, InstallOptions)
    began = time.monotonic()

    def report(outcome: str, what: str) -> None:
        app.message(f"  {outcome:<10} {what}")

    outcome = install(options, report)
    for line in summary(outcome, time.monotonic() - began):
        app.message(line)
