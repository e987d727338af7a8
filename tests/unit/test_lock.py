"""The lock: uv.lock still satisfies pyproject.toml, and the hash-pinned requirement files installs use are the
lock's own export (README: Dependencies says how to refresh them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
# requirements/<name>.txt: what it holds besides the project's own dependencies and the build group.
EXPORTS = {"appliance": [], "test": ["--extra", "test"]}


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    assert UV, "uv is missing: it is in the test extra (pip install -r requirements/test.txt)"
    return subprocess.run([UV, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def pins_of(text: str) -> list[str]:
    """The lines of an export but its comments (the header names the output file)."""
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_the_lock_satisfies_pyproject_without_resolving_again() -> None:
    done = uv("lock", "--check", "--offline")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_each_requirements_file_is_the_locks_export(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.txt"
    args = ["--frozen", "--no-emit-project", "--no-dev", "--group", "build", *EXPORTS[name]]
    done = uv("export", *args, "--format", "requirements-txt", "-q", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert pins_of(out.read_text()) == pins_of((ROOT / "requirements" / f"{name}.txt").read_text()), (
        f"requirements/{name}.txt is not uv.lock's export: refresh it (README: Dependencies)"
    )
    pins = [line for line in out.read_text().splitlines() if line[:1].isalnum()]
    assert pins and all("==" in pin and pin.endswith("\\") for pin in pins)  # each pin is followed by its hashes


def test_the_build_group_is_the_build_systems_requirements() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["dependency-groups"]["build"] == project["build-system"]["requires"]
