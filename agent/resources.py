"""SQL and Lua files shipped beside the code, read once."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def sql(name: str) -> str:
    return (files("agent") / "sql" / f"{name}.sql").read_text(encoding="utf-8")


@cache
def lua(name: str) -> str:
    return (files("agent") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every numbered migration, in order."""
    out = []
    for entry in (files("agent") / "sql" / "migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(out)
