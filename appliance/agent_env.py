"""The agent's environment: [agent.env] of secrets.toml (provider keys) and of appliance.toml (plain values).

Values arrive on standard input, never on a command line (where `ps` and the shell's history would show them),
and leave only to the worker's processes; a listing masks the secret ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit

from agent.settings import check_env_name
from appliance.errors import ApplianceError
from appliance.files import rewrite
from appliance.layout import Layout
from appliance.masking import MASK
from appliance.settings import ApplianceSettings


def listing(settings: ApplianceSettings) -> dict[str, Any]:
    agent = settings.agent
    return {
        "env": dict(sorted(agent.env.items())),
        "secret_env": dict.fromkeys(sorted(agent.secret_env), MASK),
    }


def set_value(settings: ApplianceSettings, layout: Layout, name: str, value: str, *, secret: bool) -> None:
    """Set ``name`` in secrets.toml (``secret``) or appliance.toml; refused when the other file has it."""
    try:
        check_env_name(name)
    except ValueError as exc:
        raise ApplianceError(str(exc)) from None
    if not value:
        raise ApplianceError(f"agent.env.{name}: no value on standard input")
    if "\x00" in value:
        raise ApplianceError(f"agent.env.{name}: the value holds NUL, which no environment can carry")
    other = settings.agent.env if secret else settings.agent.secret_env
    if name in other:
        where = "appliance.toml" if secret else "secrets.toml"
        raise ApplianceError(f"agent.env.{name}: already set in {where}; `appliance agent env unset {name}` first")
    path = layout.secrets_file if secret else layout.config_file
    if not path.exists():
        raise ApplianceError(f"{path}: not found: install the appliance first (install.sh)")
    doc = _read(path)
    agent = doc.setdefault("agent", tomlkit.table())
    env = agent.setdefault("env", tomlkit.table())
    env[name] = value
    rewrite(path, tomlkit.dumps(doc))


def unset(settings: ApplianceSettings, layout: Layout, name: str) -> None:
    if name in settings.agent.secret_env:
        path = layout.secrets_file
    elif name in settings.agent.env:
        path = layout.config_file
    else:
        raise ApplianceError(f"agent.env.{name}: not set (`appliance agent env list`)")
    doc = _read(path)
    del doc["agent"]["env"][name]
    rewrite(path, tomlkit.dumps(doc))


def _read(path: Path) -> tomlkit.TOMLDocument:
    return tomlkit.parse(path.read_text())
