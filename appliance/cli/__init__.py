"""The ``appliance`` command: a root group that builds the context and turns a user's error into one line.

Commands live one per module beside this one and import anything heavy inside their callback, so that
``appliance --help`` stays instant.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

import click

from appliance.cli import (
    agent,
    backup,
    capacity,
    chat,
    config,
    console,
    db,
    doctor,
    forget,
    install,
    logs,
    service,
    status,
    token,
    uninstall,
)

if TYPE_CHECKING:
    from appliance.settings import ApplianceSettings

# sysexits' EX_SOFTWARE: an unexpected exception is our bug, which scripts can tell from a user's error (1).
EXIT_BUG = 70


class App:
    """What every command receives: the settings, loaded once on first use, and the output."""

    def __init__(self, *, verbose: bool = False) -> None:
        self.verbose = verbose

    @cached_property
    def settings(self) -> ApplianceSettings:
        from appliance.settings import load

        return load()

    def render(self, data: object, *, as_json: bool) -> None:
        """Data to stdout: JSON for scripts, or a TOML-like form for people."""
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        for line in _human(data):
            click.echo(line)

    def message(self, text: str) -> None:
        """Messages go to stderr, so stdout holds only data."""
        click.echo(text, err=True)

    def exit(self, code: int) -> NoReturn:
        raise click.exceptions.Exit(code)


class _Group(click.Group):
    """Prints a user's error as one line per problem; anything else is a bug, with a traceback under -v."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            verbose = bool(ctx.params.get("verbose"))
            if verbose:
                traceback.print_exc()
            lines = _user_error(exc)
            if lines is None:
                if not verbose:
                    name = type(exc).__name__
                    click.echo(f"error: unexpected {name}: this is a bug; rerun with -v for the traceback", err=True)
                ctx.exit(EXIT_BUG)
            for line in lines:
                click.echo(f"error: {line}", err=True)
            ctx.exit(1)


def _user_error(exc: Exception) -> list[str] | None:
    """The lines to print when ``exc`` is an error the user can fix, else None."""
    # Imported here: only a failing command pays for them.
    from agent.settings import SettingsError
    from agent.store.records import InvalidMessage
    from appliance.errors import ApplianceError

    if isinstance(exc, SettingsError):
        return exc.errors
    if isinstance(exc, ApplianceError):
        return str(exc).splitlines()  # a preflight says each of its problems
    if isinstance(exc, InvalidMessage):
        return [str(exc)]
    return None


def _human(data: object) -> Iterator[str]:
    if isinstance(data, Mapping):
        yield from _toml(data)
    elif isinstance(data, list | tuple):
        yield from (str(item) for item in data)
    else:
        yield str(data)


def _toml(table: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Values first, then sub-tables, as TOML orders them. TOML has no null: an unset value is a comment."""
    tables = {key: value for key, value in table.items() if isinstance(value, Mapping)}
    for key, value in table.items():
        if key not in tables:
            yield f"# {key} is unset" if value is None else f"{key} = {json.dumps(value)}"
    for index, (key, value) in enumerate(tables.items()):
        if index or len(tables) < len(table):
            yield ""
        yield f"[{prefix}{key}]"
        yield from _toml(value, f"{prefix}{key}.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, *, verbose: bool) -> None:
    """Install, configure and operate the LiveKit agents appliance."""
    ctx.obj = App(verbose=verbose)


main.add_command(agent.agent)
main.add_command(backup.backup)
main.add_command(backup.restore)
main.add_command(capacity.capacity)
main.add_command(chat.chat)
main.add_command(config.config)
main.add_command(console.console)
main.add_command(db.db)
main.add_command(forget.forget)
main.add_command(install.install)
main.add_command(install.reconfigure)
main.add_command(install.run)
main.add_command(logs.logs)
main.add_command(service.start)
main.add_command(service.stop)
main.add_command(service.restart)
main.add_command(doctor.doctor)
main.add_command(status.status)
main.add_command(token.token)
main.add_command(uninstall.uninstall)


if __name__ == "__main__":
    main()
