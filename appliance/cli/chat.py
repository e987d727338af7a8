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
    from appliance.chatclient import ChatClient
    from appliance.cli import App
    from appliance.settings import ApplianceSettings


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
        refused = asyncio.run(
            converse(app.settings, room, identity, script or sys.stdin, wait_s, interactive=script is None)
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


async def converse(
    settings: ApplianceSettings, room: str, identity: str, lines: TextIO, wait_s: float, *, interactive: bool
) -> int:
    """Send every line and show the answers; returns how many lines the agent refused to store (each one said)."""
    from livekit import rtc

    from appliance.chatclient import ChatClient, Refused
    from appliance.tokens import join_token

    client = ChatClient(settings.livekit.url, join_token(settings.livekit, room, identity).token)
    try:
        await client.connect()
    except rtc.ConnectError as exc:
        raise ApplianceError(f"cannot join {room} at {settings.livekit.url}: {connect_failure(str(exc))}") from None
    try:
        try:
            click.echo(f"agent: {await client.greeting(wait_s)}")
        except TimeoutError:
            raise ApplianceError(f"no agent answered in {room} within {wait_s:.0f}s: is the worker running?") from None
        printer = asyncio.create_task(print_replies(client)) if interactive else None
        loop = asyncio.get_running_loop()
        refused = 0
        while line := (await loop.run_in_executor(None, lines.readline)):
            text = line.rstrip("\n")
            if not text:
                continue
            try:
                await client.send(text, ack_seconds=wait_s)
            except Refused as exc:  # not stored, so not answered: say why and go on with the next line
                click.echo(f"error: not stored: {exc}", err=True)
                refused += 1
                continue
            if not interactive:
                click.echo(f"{identity}: {text}")
                click.echo(f"agent: {await client.reply(wait_s)}")
        if printer is not None:
            printer.cancel()
        return refused
    finally:
        await client.aclose()


async def print_replies(client: ChatClient) -> None:
    while True:
        click.echo(f"agent: {await client.reply(seconds=3600)}")


def connect_failure(detail: str) -> str:
    """The cause of a failed join, in one line with its fix (the SDK's message spans lines of Rust errors)."""
    if "401" in detail or "invalid API key" in detail or "token" in detail.lower():
        return "LiveKit refused our token: livekit.api_key and livekit.api_secret must be the server's"
    if "refused" in detail.lower() or "timed out" in detail.lower():
        return "nothing answers there: is LiveKit running, and is livekit.url right?"
    return detail.splitlines()[-1][:200] if detail else "unknown error"
