"""Check an agent before the worker runs it: ``python -m agent.check``, in a process of its own.

It loads the worker's settings (the candidate ``worker.agent`` and ``worker.agent_path`` come as environment
overrides), takes the agent's packages and environment exactly as the worker does, imports the factory and builds
the agent. A module that raises on import would otherwise kill the worker's forkserver. Exit 0 and one line naming
the agent, or non-zero with the reason on stderr.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from livekit.agents import Agent

from agent.settings import AgentSettings, load_or_exit
from agent.worker import resolve_factory, use_operator_agent


def shadowed(site: Path) -> list[str]:
    """Top-level modules of the agent's directory that the venv already has: the venv's would be imported.
    A directory without __init__.py is a namespace package's portion (livekit.plugins.*): those merge."""
    names = {p.name.split(".")[0] for p in site.iterdir() if p.is_file() or (p / "__init__.py").exists()}
    return sorted(n for n in names if n.isidentifier() and importlib.util.find_spec(n) is not None)


def main() -> int:
    settings = load_or_exit(AgentSettings)
    site = settings.worker.agent_path
    if site is not None:
        hidden = shadowed(site)
        if hidden:
            print(f"the agent's module {hidden[0]!r} has the name of one the appliance has: rename it", file=sys.stderr)
            return 1
    use_operator_agent(settings)
    spec = settings.worker.agent
    agent = resolve_factory(spec)()
    if not isinstance(agent, Agent):
        print(f"{spec} returned {type(agent).__name__}, not a livekit Agent", file=sys.stderr)
        return 1
    print(f"ok: {spec} built {type(agent).__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
