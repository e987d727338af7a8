"""What the fresh-machine tests share: a prepared root, the install command, and what they observe of a box."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.harness import livekit
from tests.harness.chroot import FreshRoot, HostNetwork, clean_stale, mounts_under, pristine_tarball
from tests.harness.livekit import PrivateNetwork
from tests.harness.servers import wait_until

CHECKOUT = Path(__file__).resolve().parents[2]
SOURCE = "/root/appliance"
LIVEKIT_BIN = "/root/livekit-server"
INSTALL = f"cd {SOURCE} && ./install.sh --yes --livekit-server-bin {LIVEKIT_BIN} --node-ip 127.0.0.1"
APPLIANCE = "/opt/appliance/venv/bin/appliance"
# The appliance's settings for these boxes: every port of the bundled LiveKit on 127.0.0.1, ICE on loopback, a
# loopback STUN address (the rest is loopback anyway). install keeps an existing config and fills in the rest.
CONFIG = """\
[livekit_server]
loopback_only = true
"""


@contextlib.contextmanager
def fresh_root(private_network: PrivateNetwork | None) -> Iterator[FreshRoot]:
    """A pristine Debian 12 root holding a copy of this checkout, a livekit-server and CONFIG; removed after."""
    if os.geteuid() != 0 or private_network is None:
        pytest.skip("a debootstrap root, mounts and chroot need root")
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap is not installed (scripts/test installs it)")
    # The descriptor of the namespace the session came from: downloads go out through it.
    host = HostNetwork(private_network.host_namespace)
    clean_stale()
    root = FreshRoot(pristine_tarball(host), host)
    try:
        root.copy_checkout(CHECKOUT, SOURCE)
        root.copy_in(livekit.binary(), LIVEKIT_BIN, mode=0o755)
        write_config(root)
        yield root
    finally:
        # The tests check that uninstall leaves no process; after a failure, whatever runs is killed here.
        root.close()
        assert not mounts_under(root.path), "mounts left under the root"


def write_config(root: FreshRoot) -> None:
    config = root.path / "etc/appliance/appliance.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG)


@dataclass(frozen=True)
class DebianInstances:
    """Debian's own Redis and PostgreSQL on a box: services enabled or not, clusters, and their main processes
    (name, pid; their children aside), so that a restart shows as a new pid."""

    redis_enabled: bool
    postgresql_enabled: bool
    clusters: list[str]
    processes: list[tuple[str, int]]


def debian_instances(root: FreshRoot) -> DebianInstances:
    enabled = {
        unit: root.run(["systemctl", "--root=/", "is-enabled", unit]).stdout.strip() == "enabled"
        for unit in ("redis-server.service", "postgresql.service")
    }
    clusters = root.run(["sh", "-c", "command -v pg_lsclusters >/dev/null && pg_lsclusters -h || true"])
    # Debian's run as its redis and postgres users (the appliance's as its own user).
    debian_uids = set()
    for user in ("redis", "postgres"):
        with contextlib.suppress(AssertionError):
            debian_uids.add(pwd_entry(root, user)[0])
    main = []
    for proc in root.processes():
        try:
            parent = proc.parent()
            if proc.uids().real in debian_uids and (parent is None or parent.uids().real not in debian_uids):
                main.append((proc.name(), proc.pid))
        except psutil.Error:
            continue
    return DebianInstances(
        redis_enabled=enabled["redis-server.service"],
        postgresql_enabled=enabled["postgresql.service"],
        clusters=clusters.stdout.splitlines(),
        processes=sorted(main),
    )


def explain(done: subprocess.CompletedProcess[str], lines: int = 40) -> str:
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-lines:])
    return f"exit {done.returncode}:\n{tail}"


def restart_here(root: FreshRoot) -> None:
    """The appliance, installed from the host's network, stopped and started again from the private one, where
    the runtime checks run; then healthy."""
    stopped = root.run([APPLIANCE, "stop"], timeout=600)
    assert stopped.returncode == 0, explain(stopped)
    wait_until(lambda: not appliance_processes(root), 30, "the appliance's processes to exit")
    start = root.run([APPLIANCE, "start"], timeout=300)
    assert start.returncode == 0, explain(start)
    here = os.stat("/proc/thread-self/ns/net").st_ino
    assert {os.stat(f"/proc/{pid}/ns/net").st_ino for pid in appliance_processes(root)} == {here}
    wait_until(lambda: root.run([APPLIANCE, "status"]).returncode == 0, 180, "appliance status to say healthy")


def appliance_processes(root: FreshRoot) -> list[int]:
    """Processes in the root run by the appliance's user or from /opt/appliance (Debian's own instances aside)."""
    uid = pwd_entry(root, "appliance")[0]
    found = []
    for proc in root.processes():
        try:
            if proc.uids().real == uid or "/opt/appliance/" in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def pwd_entry(root: FreshRoot, name: str) -> tuple[int, int]:
    for line in (root.path / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {name} in the root")
