"""What the whole suite needs from the machine: one table that scripts/test installs from and CI checks.

``python3 -P harness/requirements.py packages`` prints the Debian packages to install, space-separated
(stdlib only: it runs before the venv exists). Under CI (``APPLIANCE_CI=1``, set by .ci/run) the suite starts
only when every tool is there and the network namespace can be made; otherwise one line says what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tool:
    what: str  # a command on PATH, or a glob of an absolute path
    package: str  # the Debian package that brings it
    why: str


TOOLS = (
    Tool("redis-server", "redis-server", "the store's Redis"),
    Tool("/usr/lib/postgresql/*/bin/initdb", "postgresql", "the store's PostgreSQL"),
    Tool("ip", "iproute2", "the end-to-end tests' private network namespace"),
    Tool("unshare", "util-linux", "private network and mount namespaces"),
    Tool("nsenter", "util-linux", "commands inside the private journal's namespace"),
    Tool("espeak-ng", "espeak-ng", "speech for the voice-in test"),
    Tool("/usr/sbin/debootstrap", "debootstrap", "the fresh-machine tests' Debian 12 root"),
    Tool("/lib/systemd/systemd-journald", "systemd", "the journal the programs log to"),
    Tool("systemd-cat", "systemd", "programs' output into the journal"),
    Tool("strace", "strace", "the check that no secret reaches a command line"),
    Tool("/usr/sbin/dockerd", "docker.io", "the appliance's images, and the containers of the systemd tests"),
    Tool("docker-compose", "docker-compose", "runs deploy/compose.yaml in the container tests"),
    Tool("promtool", "prometheus", "checks and unit-tests the alert rules"),
    Tool("chromium", "chromium", "the web console's browser tests (driven by playwright, headless)"),
)


def present(tool: Tool) -> bool:
    if tool.what.startswith("/"):
        return any(os.access(path, os.X_OK) for path in Path("/").glob(tool.what.lstrip("/")))
    return shutil.which(tool.what) is not None


def missing_packages() -> list[str]:
    packages: list[str] = []
    if subprocess.run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        packages.append("python3-venv")
    for tool in TOOLS:
        if not present(tool) and tool.package not in packages:
            packages.append(tool.package)
    return packages


def namespace_problem() -> str | None:
    """Why a private network namespace cannot be made here (e2e, system and fresh tests need one), or None."""
    if os.geteuid() != 0:
        return "not root: the e2e, system and fresh tests need root"
    try:
        made = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --net failed: {exc}"
    if made.returncode != 0:
        return f"no CAP_SYS_ADMIN: unshare --net says {made.stderr.strip() or made.returncode}"
    return None


def ci_problems() -> list[str]:
    """Everything that would make part of the suite skip; empty when the machine has it all."""
    problems = [f"{tool.what} missing ({tool.package}: {tool.why})" for tool in TOOLS if not present(tool)]
    problem = namespace_problem()
    if problem:
        problems.append(problem)
    return problems


if __name__ == "__main__":
    if sys.argv[1:] != ["packages"]:
        sys.exit("usage: requirements.py packages")
    print(" ".join(missing_packages()))
