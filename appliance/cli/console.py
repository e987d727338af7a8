"""``appliance console``: the web console's password and one-time links."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli import App


@click.group()
def console() -> None:
    """The web console (http://127.0.0.1:8090/ by default): its password and its one-time links."""


@console.command()
@click.option("--no-restart", is_flag=True, help="Leave the console running; it takes the password when it restarts.")
@click.pass_obj
def passwd(app: App, *, no_restart: bool) -> None:
    """Set the operator's password, read from standard input (at least 12 characters); only its scrypt hash is
    kept, in secrets.toml. Then the console restarts to take it.

    \b
    appliance console passwd            (type it, then Ctrl-D)
    """
    import tomlkit

    from appliance.console.auth import hash_password
    from appliance.errors import ApplianceError
    from appliance.files import rewrite
    from appliance.layout import Layout
    from appliance.supervisor import Supervisor

    if os.geteuid() != 0:
        raise ApplianceError("run as root (or with sudo): the password's hash goes in secrets.toml")
    password = sys.stdin.read().removesuffix("\n")
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        raise ApplianceError(f"console password: {exc}; nothing changed") from None
    layout = Layout.of(app.settings)
    if not layout.secrets_file.exists():
        raise ApplianceError(f"{layout.secrets_file}: not found: install the appliance first (install.sh)")
    doc = tomlkit.parse(layout.secrets_file.read_text())
    doc.setdefault("console", tomlkit.table())["password_hash"] = hashed
    rewrite(layout.secrets_file, tomlkit.dumps(doc))
    app.message(f"console.password_hash set in {layout.secrets_file}")
    sup = Supervisor(layout.supervisor_socket)
    if no_restart or not sup.answers() or "console" not in {p.name for p in sup.processes()}:
        app.message("the console takes it when it next starts (`appliance restart console`)")
        return
    sup.stop("console", timeout_s=15)
    sup.start("console")
    app.message("console restarted")


@console.command()
@click.argument("room")
@click.option("--identity", help="Who the holder is in the room (default: guest-<short id>).")
@click.option("--ttl", help="How long the link stays valid unused, e.g. 15m, 2h (default: console.link_ttl_s).")
@click.pass_obj
def link(app: App, *, room: str, identity: str | None, ttl: str | None) -> None:
    """Print a signed link that lets one person into ROOM, once: it expires unused after --ttl, and a used
    link does not work again."""
    import secrets

    from agent.store.records import InvalidMessage, check_id
    from appliance.console.auth import Signer, link_token
    from appliance.errors import ApplianceError
    from appliance.tokens import parse_ttl

    console_settings = app.settings.console
    if console_settings.secret_key is None:
        raise ApplianceError("console.secret_key: unset (`appliance install` makes one in secrets.toml)")
    identity = identity or f"guest-{secrets.token_hex(3)}"
    try:
        check_id("room", room)
        check_id("identity", identity)
    except InvalidMessage as exc:
        raise ApplianceError(str(exc)) from None
    seconds = parse_ttl(ttl).total_seconds() if ttl else console_settings.link_ttl_s
    signer = Signer(console_settings.secret_key.get_secret_value().encode())
    base = console_settings.public_url or f"http://{console_settings.bind}:{console_settings.port}"
    click.echo(f"{base.rstrip('/')}/l/{link_token(signer, room, identity, seconds)}")
    app.message(f"for room {room} as {identity}; valid once, for {seconds:.0f} s")
