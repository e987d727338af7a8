"""``appliance token ROOM IDENTITY``: a join token for a front end."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli import App


@click.command()
@click.argument("room")
@click.argument("identity")
@click.option("--ttl", default="6h", show_default=True, help="How long the token is valid: 90s, 15m, 6h, 7d.")
@click.option("--name", help="The participant's display name (default: IDENTITY).")
@click.option("--json", "as_json", is_flag=True, help="Print the token, room, identity, URL and expiry as JSON.")
@click.pass_obj
def token(app: App, room: str, identity: str, ttl: str, name: str | None, *, as_json: bool) -> None:
    """Print a join token for a front end.

    The LiveKit token lets IDENTITY join ROOM (publish, subscribe, send data); it is signed with the appliance's
    livekit.api_key and api_secret. A front end passes it to the LiveKit client SDK."""
    from appliance.tokens import join_token, parse_ttl

    made = join_token(app.settings.livekit, room, identity, ttl=parse_ttl(ttl), name=name)
    if as_json:
        app.render(made.as_dict(), as_json=True)
        return
    click.echo(made.token)
    until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(made.expires_at))
    app.message(f"valid until {until} for {identity} in room {room}")
