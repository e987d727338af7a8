"""A conversation with a room's agent from a terminal: the loop behind ``appliance chat``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.chatclient import ChatClient
    from appliance.settings import ApplianceSettings


async def converse(
    settings: ApplianceSettings,
    room: str,
    identity: str,
    lines: TextIO,
    wait_s: float,
    *,
    interactive: bool,
    out: Callable[..., None],
) -> int:
    """Send every line and show the answers through ``out`` (click.echo's signature: ``err=True`` for errors);
    returns how many lines the agent refused to store (each one said)."""
    from livekit import rtc

    from appliance.chatclient import ChatClient, Refused
    from appliance.tokens import join_token

    client = ChatClient(settings.livekit.url, join_token(settings.livekit, room, identity).token)
    client.on_told = lambda told: out(describe(told), err=True)
    try:
        await client.connect()
    except rtc.ConnectError as exc:
        raise ApplianceError(f"cannot join {room} at {settings.livekit.url}: {connect_failure(str(exc))}") from None
    try:
        try:
            if client.agent_present():  # others are talking to it: no greeting for us
                out(f"(joined {room}, where its agent already is)", err=True)
            else:
                out(f"agent: {await client.greeting(wait_s)}")
        except TimeoutError:
            raise ApplianceError(f"no agent answered in {room} within {wait_s:.0f}s: is the worker running?") from None
        printer = asyncio.create_task(print_replies(client, out)) if interactive else None
        loop = asyncio.get_running_loop()
        refused = 0
        while line := (await loop.run_in_executor(None, lines.readline)):
            text = line.rstrip("\n")
            if not text:
                continue
            try:
                await client.send(text, ack_seconds=wait_s)
            except Refused as exc:  # not stored, so not answered: say why and go on with the next line
                out(f"error: not stored: {exc}", err=True)
                refused += 1
                continue
            if not interactive:
                out(f"{identity}: {text}")
                out(f"agent: {await client.reply(wait_s)}")
        if printer is not None:
            printer.cancel()
        return refused
    finally:
        await client.aclose()


async def print_replies(client: ChatClient, out: Callable[..., None]) -> None:
    while True:
        out(f"agent: {await client.reply(seconds=3600)}")


def describe(told: dict[str, str]) -> str:
    """What the appliance told the room about its agent (agent/redispatch.py), for the terminal."""
    if told.get("state") == "given_up":
        return f"(the agent {told.get('agent')} died ({told.get('cause')}) too often: no agent is dispatched here)"
    return f"(the agent {told.get('agent')} died ({told.get('cause')}): the appliance is dispatching it again)"


def connect_failure(detail: str) -> str:
    """The cause of a failed join, in one line with its fix (the SDK's message spans lines of Rust errors)."""
    if "401" in detail or "invalid API key" in detail or "token" in detail.lower():
        return "LiveKit refused our token: livekit.api_key and livekit.api_secret must be the server's"
    if "refused" in detail.lower() or "timed out" in detail.lower():
        return "nothing answers there: is LiveKit running, and is livekit.url right?"
    return detail.splitlines()[-1][:200] if detail else "unknown error"
