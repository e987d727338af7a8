"""What the installed appliance is made of, as digests: a new checkout or new packages tell an upgrade."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path


def code() -> str:
    """The installed agent and appliance code: a new checkout (an upgrade) restarts the programs running it."""
    import agent
    import appliance

    digest = hashlib.sha256()
    for package in (agent, appliance):
        root = Path(next(iter(package.__path__)))
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in {".py", ".sql", ".lua"}:
                digest.update(str(path.relative_to(root.parent)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def venv_pins() -> list[str]:
    """Every package of the appliance's venv as name==version (the lock, as installed)."""
    found = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    return sorted(f"{name}=={version}" for name, version in found.items())


def appliance() -> str:
    """The code and the packages together: what an operator's agent was checked against."""
    return hashlib.sha256("\n".join([code(), *venv_pins()]).encode()).hexdigest()
