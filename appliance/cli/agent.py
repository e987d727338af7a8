"""``appliance agent``: install the operator's agent, see it, roll it back, remove it; its environment."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.cli import App


@click.group()
def agent() -> None:
    """The agent the worker runs: install your own, roll back, back to the sample; its environment and keys."""


def _as_root() -> None:
    from appliance.errors import ApplianceError

    if os.geteuid() != 0:
        raise ApplianceError("run as root (or with sudo): the agent's files and the settings belong to root")


@agent.command()
@click.argument("source")
@click.option("--factory", metavar="PACKAGE.MODULE:CALLABLE", help="The callable that returns the Agent.")
@click.option("--find-links", "find_links", multiple=True, metavar="DIR|URL", help="Also look for wheels here.")
@click.option("--no-index", is_flag=True, help="Only --find-links: no package index (offline).")
@click.option("--index-url", metavar="URL", help="The package index (default: pip's, PyPI).")
@click.pass_obj
def install(
    app: App, *, source: str, factory: str | None, find_links: tuple[str, ...], no_index: bool, index_url: str | None
) -> None:
    """Install SOURCE (a project directory, a wheel or a requirements file) and switch the worker to it.

    \b
    Its packages go to a directory of its own, resolved with every package of the appliance pinned (a conflict
    names both requirements and changes nothing); the factory comes from --factory or from the project's entry
    point [project.entry-points."livekit.appliance"] agent = "package.module:callable". It is imported and built
    in a separate process, as the worker's user, before the worker is restarted gracefully onto it.
    """
    from appliance import agents
    from appliance.layout import Layout

    _as_root()
    index = (*(["--no-index"] if no_index else []), *(["--index-url", index_url] if index_url else []))
    index += tuple(arg for link in find_links for arg in ("--find-links", link))
    done = agents.install(
        app.settings, Layout.of(app.settings), source, factory=factory, index=index, progress=app.message
    )
    app.message(f"installed {done.name} {done.version} ({done.factory}) in {done.directory}")


@agent.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(app: App, *, as_json: bool) -> None:
    """What the worker runs (name, version, factory, source, when installed) and the agent before it."""
    from appliance import agents
    from appliance.layout import Layout

    app.render(agents.status(app.settings, Layout.of(app.settings)), as_json=as_json)


@agent.command()
@click.pass_obj
def rollback(app: App) -> None:
    """Switch back to the agent before this one, gracefully (this one becomes the previous)."""
    from appliance import agents
    from appliance.layout import Layout

    _as_root()
    before = agents.rollback(app.settings, Layout.of(app.settings), progress=app.message)
    app.message(f"rolled back to {before.describe()['name']} ({before.factory})")


@agent.command()
@click.pass_obj
def remove(app: App) -> None:
    """Back to the sample agent the appliance ships, gracefully (a rollback brings this one back)."""
    from appliance import agents
    from appliance.layout import Layout

    _as_root()
    agents.remove(app.settings, Layout.of(app.settings), progress=app.message)
    app.message("the worker runs the sample agent")


@agent.group()
def env() -> None:
    """The agent's environment: [agent.env] of secrets.toml (keys) and appliance.toml (plain values)."""


@env.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(app: App, *, as_json: bool) -> None:
    """Every variable; the secret ones masked."""
    from appliance import agent_env

    app.render(agent_env.listing(app.settings), as_json=as_json)


@env.command("set")
@click.argument("name")
@click.option("--plain", is_flag=True, help="Not a secret: kept in appliance.toml, shown by `env list`.")
@click.option("--no-restart", is_flag=True, help="Leave the worker running; it takes the value when it restarts.")
@click.pass_obj
def set_(app: App, *, name: str, plain: bool, no_restart: bool) -> None:
    """Set NAME to the value read from standard input (a secret unless --plain), then restart the worker
    gracefully.

    \b
    printf %s "$OPENAI_API_KEY" | appliance agent env set OPENAI_API_KEY
    appliance agent env set DEEPGRAM_API_KEY      (type it, then Ctrl-D)
    """
    from appliance import agent_env
    from appliance.layout import Layout

    _as_root()
    value = sys.stdin.read().removesuffix("\n")
    layout = Layout.of(app.settings)
    agent_env.set_value(app.settings, layout, name, value, secret=not plain)
    app.message(f"agent.env.{name} set in {layout.config_file.name if plain else layout.secrets_file.name}")
    _restart(app, no_restart=no_restart)


@env.command()
@click.argument("name")
@click.option("--no-restart", is_flag=True, help="Leave the worker running; it loses the value when it restarts.")
@click.pass_obj
def unset(app: App, *, name: str, no_restart: bool) -> None:
    """Remove NAME from the agent's environment, then restart the worker gracefully."""
    from appliance import agent_env
    from appliance.layout import Layout

    _as_root()
    agent_env.unset(app.settings, Layout.of(app.settings), name)
    app.message(f"agent.env.{name} removed")
    _restart(app, no_restart=no_restart)


def _restart(app: App, *, no_restart: bool) -> None:
    from appliance import service
    from appliance.layout import Layout
    from appliance.settings import load
    from appliance.supervisor import Supervisor

    settings = load()  # as just written
    layout = Layout.of(settings)
    if no_restart or not Supervisor(layout.supervisor_socket).answers():
        app.message("the worker takes it when it next starts (`appliance restart worker`)")
        return
    now = service.restart_worker(settings, layout, now=False, progress=app.message)
    app.message(f"{now} runs with it")
