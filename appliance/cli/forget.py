"""``appliance forget CONVERSATION``: delete a conversation from every tier, spools included."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.cli import App


@click.command()
@click.argument("conversation")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@click.pass_obj
def forget(app: App, conversation: str, *, yes: bool, as_json: bool) -> None:
    """Delete a conversation from every tier.

    Deletes CONVERSATION (its id) and all its messages from PostgreSQL, Redis (the cache, the room's mapping, the
    write-ahead stream, dead letters) and the spool files, and prints what was removed from each. Cannot be
    undone."""
    from appliance.forget import forget as forget_conversation

    settings = app.settings
    if not yes:
        click.confirm(
            f"Delete conversation {conversation} and all its messages from every tier? This cannot be undone",
            abort=True,
            err=True,
        )
    removed = forget_conversation(settings, conversation)
    if not removed.found:
        raise ApplianceError(f"conversation {conversation!r}: nothing stored in any tier (check the id)")
    app.render(removed.as_dict(), as_json=as_json)
    if removed.status == "active":
        app.message(
            "note: the conversation was active; if a room still uses it, its agent may write it again:"
            " run forget again once the room has ended"
        )
