"""Under CI a skip is a failure, and a machine that lacks a tool stops the run: an inner pytest with our conftest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import requirements

ROOT = Path(__file__).resolve().parents[2]
SKIPPING = """
import pytest

def test_skips():
    pytest.skip("no frobnicator on this machine")

def test_passes():
    pass
"""


def inner_pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(SKIPPING)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "--rootdir",
         str(tmp_path), "-c", str(ROOT / "pyproject.toml"), str(tmp_path / "test_inner.py")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def test_a_skip_fails_under_ci_and_only_there(tmp_path: Path) -> None:
    outside = inner_pytest(tmp_path, APPLIANCE_CI="0")
    assert outside.returncode == 0, outside.stdout + outside.stderr
    assert "1 passed, 1 skipped" in outside.stdout
    under = inner_pytest(tmp_path, APPLIANCE_CI="1")
    assert under.returncode == 1, under.stdout + under.stderr
    assert "skipped under CI, and not in tests/conftest.py ALLOWED_SKIPS: no frobnicator" in under.stdout
    assert "1 failed, 1 passed" in under.stdout
    assert "time per test directory" in under.stdout


def test_a_missing_tool_stops_the_run_under_ci_with_one_line(tmp_path: Path) -> None:
    run = inner_pytest(tmp_path, APPLIANCE_CI="1", LIVEKIT_SERVER_BIN=str(tmp_path / "no-livekit-server"))
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    lines = [line for line in (run.stdout + run.stderr).splitlines() if "error" in line.lower()]
    assert len(lines) == 1, run.stdout + run.stderr
    assert "cannot run the whole suite" in lines[0] and "no-livekit-server" in lines[0]


def test_another_livekit_server_version_stops_the_run_under_ci(tmp_path: Path) -> None:
    other = tmp_path / "livekit-server"
    other.write_text("#!/bin/sh\necho 'livekit-server version 1.9.11'\n")
    other.chmod(0o755)
    run = inner_pytest(tmp_path, APPLIANCE_CI="1", LIVEKIT_SERVER_BIN=str(other))
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    wanted = (ROOT / "config" / "livekit-server.version").read_text().strip()
    assert f"{other} is livekit-server 1.9.11, not {wanted}" in run.stdout + run.stderr


def test_the_requirements_name_each_missing_tool_and_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = requirements.Tool("/nonexistent/frobnicate", "frobnicator", "frobnication")
    monkeypatch.setattr(requirements, "TOOLS", (*requirements.TOOLS, missing))
    assert "frobnicator" in requirements.missing_packages()
    assert "/nonexistent/frobnicate missing (frobnicator: frobnication)" in requirements.ci_problems()


@pytest.mark.parametrize(
    ("suite", "limit_s", "code", "says"),
    [
        ("sleep 2", "1", 1, r"error: the suite took [23] s, over the 1 s budget: make it faster"),
        ("sleep 2", "60", 0, r"ci: the suite took 0 min [23] s \(limit 1 min\)"),
        ("exit 5", "60", 1, r"error: pytest collected no tests"),
        ("exit 3", "60", 3, r"ci: the suite took 0 min [01] s \(limit 1 min\)"),
    ],
)
def test_ci_run_fails_a_suite_over_its_budget_or_without_tests(
    tmp_path: Path, suite: str, limit_s: str, code: int, says: str
) -> None:
    """.ci/run itself, around a stand-in for scripts/test."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text())
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "test").write_text(f'[ "$APPLIANCE_CI" = 1 ] || exit 9\n{suite}\n')
    done = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")],
        env={**os.environ, "APPLIANCE_CI_LIMIT_S": limit_s},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code, done.stderr
    assert any(re.fullmatch(says, line) for line in done.stderr.splitlines()), done.stderr
