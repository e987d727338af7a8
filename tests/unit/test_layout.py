"""The folders are the architecture: the data plane runs alone, so agent/ never imports appliance/."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).parents[2] / "agent"


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_agent_never_imports_appliance() -> None:
    sources = sorted(AGENT.rglob("*.py"))
    assert sources, f"no sources under {AGENT}"
    offenders = [
        f"{path.relative_to(AGENT.parent)} imports {module}"
        for path in sources
        for module in sorted(imported_modules(path))
        if module == "appliance" or module.startswith("appliance.")
    ]
    assert offenders == []
