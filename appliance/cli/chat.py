"""``appliance chat ROOM``: talk to the agent in a room from a terminal, or replay a script of lines."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import sys
import uuid
from typing import TYPE_CHECKING, TextIO

import click

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.cli import App


@click.command()
@click.argument("room")
@click.option("--identity", help="Your name in the room (default: your user name and a short id).")
@click.option("--script", type=click.File("r"), help="Send each line of FILE (waiting for each answer), then leave.")
@click.option("--wait", "wait_s", default=30.0, show_default=True, help="Seconds to wait for the agent to answer.")
@click.pass_obj
def chat(app: App, room: str, identity: str | None, script: TextIO | None, wait_s: float) -> None:
    """Join ROOM and talk to its agent: each line you type (or each line of --script) is sent on lk.chat; the
    agent's replies are printed. Lines are acknowledged once stored; a line the agent refuses (e.g. one with NUL)
    is shown as an error, and the exit code is then 1."""
    identity = identity or f"{getpass.getuser()}-{uuid.uuid4().hex[:4]}"
    if not app.verbose:
        logging.getLogger("livekit").setLevel(logging.CRITICAL)  # the SDK's own lines would bury ours
    code = 0
    try:
        from appliance.conversation import converse

        refused = asyncio.run(
            converse(
                app.settings, room, identity, script or sys.stdin, wait_s, interactive=script is None, out=click.echo
            )
        )
        code = 1 if refused else 0
    except ApplianceError as exc:
        app.message(f"error: {exc}")
        code = 1
    # livekit's native client sometimes aborts (a panic in one of its threads) while it is disposed at interpreter
    # exit, turning a clean run into SIGABRT. Its rooms are closed by now and the OS frees the rest: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
