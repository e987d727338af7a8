"""An agent version's packages: resolved against the appliance's venv, kept as wheels, installed into a directory.

pip does the work: a dry run resolves the agent's requirements with every package of the venv pinned (the
appliance's lock, as installed), so the agent can never move one of them and pip reports only what the venv
lacks; those are built or downloaded as wheels (kept, so the same agent installs again offline) and installed with
``--target`` into the version's own directory. The venv itself is never written to.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError

PIP_TIMEOUT_S = 900
ENTRY_POINT_GROUP = "livekit.appliance"  # [project.entry-points."livekit.appliance"] agent = "pkg.mod:build"


@dataclass(frozen=True)
class Source:
    """What the operator gave: a project directory, a wheel or a requirements file, as pip arguments."""

    text: str  # as recorded (absolute path)
    pip_args: tuple[str, ...]

    @classmethod
    def of(cls, given: str) -> Source:
        path = Path(given).absolute()
        if path.is_dir():
            if not (path / "pyproject.toml").is_file() and not (path / "setup.py").is_file():
                raise ApplianceError(f"{given}: a directory without pyproject.toml: not a Python project")
            return cls(str(path), (str(path),))
        if path.is_file() and path.suffix == ".whl":
            return cls(str(path), (str(path),))
        if path.is_file():
            return cls(str(path), ("-r", str(path)))
        raise ApplianceError(f"{given}: no such project directory, wheel (.whl) or requirements file")


@dataclass(frozen=True)
class Resolved:
    name: str  # the agent's distribution: the one requested (the project, the wheel, or a requirement's first)
    version: str
    packages: list[str]  # name==version of everything installed into the agent's directory


def resolve(source: Source, index: tuple[str, ...], pins: list[str], work: Path) -> tuple[Resolved, list[str]]:
    """What the venv lacks for ``source``; also the pip arguments that fetch each of those (for ``fetch``)."""
    constraints = work / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    report = work / "report.json"
    _pip("install", "--dry-run", "--report", str(report), "-c", str(constraints),
         *index, *source.pip_args, what=source.text)  # fmt: skip
    items = json.loads(report.read_text())["install"]
    have = {pin.split("==")[0].lower() for pin in pins}
    moved = [i for i in items if i["metadata"]["name"].lower() in have]
    if moved:
        name = moved[0]["metadata"]["name"]
        raise ApplianceError(f"{source.text} would replace the appliance's {name}: nothing changed")
    requested = [i for i in items if i.get("requested")] or items
    if not requested:
        raise ApplianceError(f"{source.text}: nothing to install (the appliance has every package it names)")
    head = requested[0]["metadata"]
    fetch = [i["download_info"]["url"] if i.get("is_direct") else f"{i['metadata']['name']}=={i['metadata']['version']}"
             for i in items]  # fmt: skip
    packages = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items)
    return Resolved(head["name"], head["version"], packages), fetch


def fetch(requirements: list[str], index: tuple[str, ...], wheels: Path, what: str) -> None:
    """Each requirement as a wheel in ``wheels`` (built from source when it has no wheel)."""
    _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), *index, *requirements, what=what)


def install_wheels(wheels: Path, site: Path, what: str) -> None:
    files = sorted(str(w) for w in wheels.glob("*.whl"))
    _pip("install", "--no-deps", "--no-index", "--target", str(site), *files, what=what)


def factory_of(site: Path, name: str) -> str | None:
    """The factory the agent's distribution declares in its entry points, if it does."""
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if dist.metadata["Name"].lower().replace("_", "-") != name.lower().replace("_", "-"):
            continue
        for entry in dist.entry_points.select(group=ENTRY_POINT_GROUP, name="agent"):
            return entry.value
    return None


def _pip(*args: str, what: str) -> None:
    """Run pip with the venv's Python; its failure becomes one line (a resolution conflict names both sides)."""
    command = [sys.executable, "-m", "pip", *args[:1], "--disable-pip-version-check", "--no-input", *args[1:]]
    with tempfile.TemporaryFile("w+") as log:
        try:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ApplianceError(f"{what}: pip {args[0]} took over {PIP_TIMEOUT_S} s: nothing changed") from None
        if done.returncode == 0:
            return
        log.seek(0)
        raise ApplianceError(f"{what}: {pip_failure(log.read())}; nothing changed")


def pip_failure(output: str) -> str:
    """One line for pip's failure: the two requirements of a conflict, else pip's last error line."""
    cause = output.partition("The conflict is caused by:")[2].strip().splitlines()
    sides = [line.strip() for line in cause[:2] if line.strip()]
    if len(sides) == 2:
        theirs, ours = sorted(sides, key=lambda side: "(constraint)" in side)
        pinned = re.sub(r"^The user requested \(constraint\)\s*", "", ours)
        return f"conflict: {theirs}, but the appliance has {pinned}"
    errors = [line.removeprefix("ERROR: ").strip() for line in output.splitlines() if line.startswith("ERROR:")]
    useful = [e for e in errors if not e.startswith("ResolutionImpossible")] or errors
    if useful:
        return useful[0]
    tail = [line.strip() for line in output.splitlines() if line.strip()]
    return tail[-1] if tail else "pip failed"
