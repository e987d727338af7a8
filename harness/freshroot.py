"""What the fresh-machine tests share: a prepared root, the install command, and what they observe of a box."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from appliance.host import PROMETHEUS_PACKAGE
from appliance.install_state import InstallState
from harness import livekit
from harness.appliance import LIVEKIT_CLIENT_TGZ
from harness.chroot import FreshRoot, HostNetwork, clean_stale, mounts_under, pristine_tarball
from harness.livekit import PrivateNetwork
from harness.servers import wait_until

CHECKOUT = Path(__file__).resolve().parents[1]
SOURCE = "/root/appliance"
LIVEKIT_BIN = "/root/livekit-server"
LIVEKIT_CLIENT = "/root/livekit-client.tgz"
INSTALL = (
    f"cd {SOURCE} && ./install.sh --yes --livekit-server-bin {LIVEKIT_BIN} --livekit-client-tgz {LIVEKIT_CLIENT}"
    " --node-ip 127.0.0.1"
)
APPLIANCE = "/opt/appliance/venv/bin/appliance"
STATE_FILE = "/var/lib/appliance/install-state.env"
DEBIAN_UNITS = ("redis-server.service", "postgresql.service", "prometheus.service")
# What an appliance leaves on a box, by path; more is found by name and by owner in test 8.
OURS = [
    "/opt/appliance",
    "/etc/appliance",
    "/var/lib/appliance",
    "/var/log/appliance",
    "/run/appliance",
    "/etc/systemd/system/appliance.service",
    "/usr/local/bin/appliance",
    "/etc/postgresql-common/createcluster.d/50-appliance.conf",
]
# The appliance's settings for these boxes: every port of the bundled LiveKit on 127.0.0.1, ICE on loopback, a
# loopback STUN address (the rest is loopback anyway), and the bundled Prometheus (its package and Debian's service
# go through install and uninstall too). install keeps an existing config and fills in the rest.
LOOPBACK_CONFIG = """\
[livekit_server]
loopback_only = true
"""
CONFIG = LOOPBACK_CONFIG + "[metrics]\nprometheus = true\n"


def fresh_root(
    private_network: PrivateNetwork | None, config: str = CONFIG
) -> contextlib.AbstractContextManager[FreshRoot]:
    """``prepared_root``, or the test skips where there can be none."""
    if os.geteuid() != 0 or private_network is None:
        pytest.skip("a debootstrap root, mounts and chroot need root")
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap is not installed (scripts/test installs it)")
    return prepared_root(private_network, config)


@contextlib.contextmanager
def prepared_root(private_network: PrivateNetwork, config: str = CONFIG) -> Iterator[FreshRoot]:
    """A pristine Debian 12 root holding a copy of this checkout, a livekit-server and ``config``; removed after."""
    # The descriptor of the namespace the session came from: downloads go out through it.
    host = HostNetwork(private_network.host_namespace)
    clean_stale()
    root = FreshRoot(pristine_tarball(host), host)
    try:
        root.copy_checkout(CHECKOUT, SOURCE)
        root.copy_in(livekit.binary(), LIVEKIT_BIN, mode=0o755)
        root.copy_in(LIVEKIT_CLIENT_TGZ, LIVEKIT_CLIENT)
        write_config(root, config)
        yield root
    finally:
        # The tests check that uninstall leaves no process; after a failure, whatever runs is killed here.
        root.close()
        assert not mounts_under(root.path), "mounts left under the root"


def run_install(
    root: FreshRoot,
    command: str = INSTALL,
    *,
    host_network: bool = False,
    input: str | None = None,
    wrap: Sequence[str] = (),
    timeout: float = 1500,
) -> subprocess.CompletedProcess[str]:
    """install.sh run in the root: it succeeds and says nothing is wrong (no "error:" line, as a failure in a
    command substitution once printed during a successful run)."""
    done = root.run(["bash", "-c", command], host_network=host_network, input=input, wrap=wrap, timeout=timeout)
    assert done.returncode == 0, explain(done)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.lstrip().startswith("error:")]
    assert not errors, "install.sh succeeded but printed:\n" + "\n".join(errors)
    return done


def install_sh_packages() -> list[str]:
    """Every Debian package the installer adds: install.sh's own, then appliance.host's."""
    from appliance.host import BOOTSTRAP_PACKAGES, PACKAGES

    return [*BOOTSTRAP_PACKAGES, *PACKAGES]


def package_installed(root: FreshRoot, package: str) -> bool:
    status = root.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package]).stdout
    return status.startswith("ii")


def expected_state(root: FreshRoot, *, prometheus: bool = True) -> dict[str, str]:
    """What install.sh's first run must record about this box (but INSTALLED_AT), from the box before it runs;
    ``prometheus``: its config turns the bundled Prometheus on (CONFIG does, LOOPBACK_CONFIG not)."""
    packages = [*install_sh_packages(), *([PROMETHEUS_PACKAGE] if prometheus else [])]
    state = {
        "APPLIANCE_HOME": "/opt/appliance",
        "CONFIG_FILE": "/etc/appliance/appliance.toml",
        "CLI_LINK": "/usr/local/bin/appliance",
        "CREATECLUSTER_CONF": "/etc/postgresql-common/createcluster.d/50-appliance.conf",
        "PACKAGES_ADDED": " ".join(p for p in packages if not package_installed(root, p)),
    }
    disabled = []
    for unit in DEBIAN_UNITS if prometheus else DEBIAN_UNITS[:2]:
        key = unit.removesuffix(".service").replace("-", "_").upper()
        present = package_installed(root, unit.removesuffix(".service"))
        enabled = root.run(["systemctl", "--root=/", "is-enabled", unit]).stdout.strip()
        state[f"{key}_PACKAGE"] = "installed" if present else "absent"
        state[f"{key}_ENABLED"] = enabled or "absent"
        state[f"{key}_ACTIVE"] = "unknown"  # no systemd runs in the root
        if not present:
            disabled.append(unit)  # Debian's service that comes with our package stays off
    state["SERVICES_DISABLED"] = " ".join(disabled)
    return state


def assert_state(root: FreshRoot, expected: dict[str, str]) -> None:
    """install.sh's state file says exactly ``expected``, and when it first ran."""
    state = InstallState.read(root.path / STATE_FILE.lstrip("/"))
    assert state is not None, f"no {STATE_FILE}"
    values = dict(state.values)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", values.pop("INSTALLED_AT", "")), state.values
    # The packages added, in any order (uninstall names them all at once).
    for found in (values, expected := dict(expected)):
        found["PACKAGES_ADDED"] = " ".join(sorted(found.get("PACKAGES_ADDED", "").split()))
    assert values == expected, f"the state file says {values}, not {expected}"


def write_config(root: FreshRoot, text: str = CONFIG) -> None:
    config = root.path / "etc/appliance/appliance.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


@dataclass(frozen=True)
class DebianInstances:
    """Debian's own Redis and PostgreSQL on a box: services enabled or not, clusters, and their main processes
    (name, pid; their children aside), so that a restart shows as a new pid."""

    redis_enabled: bool
    postgresql_enabled: bool
    prometheus_enabled: bool
    clusters: list[str]
    processes: list[tuple[str, int]]


def debian_instances(root: FreshRoot) -> DebianInstances:
    enabled = {
        unit: root.run(["systemctl", "--root=/", "is-enabled", unit]).stdout.strip() == "enabled"
        for unit in DEBIAN_UNITS
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
        prometheus_enabled=enabled["prometheus.service"],
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
    here = Path("/proc/thread-self/ns/net").stat().st_ino
    assert {Path(f"/proc/{pid}/ns/net").stat().st_ino for pid in appliance_processes(root)} == {here}
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
