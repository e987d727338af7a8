"""The box under the appliance, set up when install.sh hands over (``appliance install --host``): the first run's
record of the box (the install-state file, which ``appliance uninstall`` reads), the Debian packages the appliance
needs without Debian's own Redis and PostgreSQL instances, the ``appliance`` command on root's PATH and the bundled
livekit-server binary. install.sh itself only checks what must hold before anything changes, installs python3 and
python3-venv (recorded here) and the venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import programs as registry
from appliance import systemd
from appliance.errors import ApplianceError
from appliance.files import write_atomic
from appliance.install_state import DEBIAN_SERVICES, STATE_FILE, InstallState, state_key
from appliance.resources import resource_path

if TYPE_CHECKING:
    from appliance.layout import Layout
    from appliance.settings import ApplianceSettings

Report = Callable[[str, str], None]

APPLIANCE_HOME = Path("/opt/appliance")
CLI_LINK = Path("/usr/local/bin/appliance")
# The packages installed before install.sh's first change (one per line; it writes this, the state is made from it).
PACKAGES_BEFORE = STATE_FILE.with_name("packages-before")
# What install.sh installs itself (its BOOTSTRAP_PACKAGES; tests/unit/test_host.py checks they agree).
BOOTSTRAP_PACKAGES = ("python3", "python3-venv")
CREATECLUSTER_CONF = Path("/etc/postgresql-common/createcluster.d/50-appliance.conf")
POLICY_RC = Path("/usr/sbin/policy-rc.d")
# The Debian packages installed here (install.sh installs python3 and python3-venv first), and the one installed
# only when [metrics] prometheus is on.
PACKAGES = ("redis-server", "postgresql", "iproute2", "ca-certificates")
PROMETHEUS_PACKAGE = "prometheus"


def packages(settings: ApplianceSettings) -> tuple[str, ...]:
    """The Debian packages this box's settings need."""
    return (*PACKAGES, PROMETHEUS_PACKAGE) if registry.BY_NAME["prometheus"].runs_with(settings) else PACKAGES


# ---- facts about the box ----------------------------------------------------------------------------------------


def package_installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], capture_output=True, text=True, check=False
    )
    return done.stdout.startswith("ii")


def livekit_version(binary: Path) -> str | None:
    """What a livekit-server binary says it is ("1.13.5"; doctor's reading of it), else None."""
    from appliance.doctor import dotted, livekit_server_version

    found = livekit_server_version(binary)
    return dotted(found) if found else None


def bundled_livekit_version() -> str:
    return resource_path("config/livekit-server.version").read_text().strip()


# ---- the steps ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """What the bootstrap hands over: the checkout it ran from, its log, the packages it installed itself."""

    source: Path
    log: Path

    @classmethod
    def from_environment(cls) -> Host:
        source, log = os.environ.get("APPLIANCE_SOURCE"), os.environ.get("APPLIANCE_INSTALL_LOG")
        if not source or not log:
            raise ApplianceError("--host is for install.sh's handover (APPLIANCE_SOURCE and APPLIANCE_INSTALL_LOG)")
        return cls(Path(source), Path(log))

    def run(self, argv: list[str]) -> int:
        """Run a command with its output in the install log; its exit status."""
        with self.log.open("a") as log:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log).returncode


def _service_values(unit: str) -> dict[str, str]:
    key = state_key(unit)
    return {
        f"{key}_PACKAGE": "installed" if package_installed(DEBIAN_SERVICES[unit]) else "absent",
        f"{key}_ENABLED": systemd.query("is-enabled", unit),
        f"{key}_ACTIVE": systemd.query("is-active", unit),
    }


def record_state(config_file: Path, settings: ApplianceSettings, report: Report) -> InstallState:
    """The box as the first run found it: before install.sh changed anything, the packages it had (then the
    bootstrap's packages, and those they pulled in, count as added), and Debian's own services; a service first
    needed later (Prometheus's, once [metrics] prometheus is on) is recorded by that run, before its package."""
    state = InstallState.read(STATE_FILE)
    before = set(PACKAGES_BEFORE.read_text().split()) if PACKAGES_BEFORE.exists() else None
    needed = packages(settings)
    added = [
        p for p in (*BOOTSTRAP_PACKAGES, *needed) if before is not None and p not in before and package_installed(p)
    ]
    units = [unit for unit, package in DEBIAN_SERVICES.items() if package in needed]
    if state is None:
        values = {
            "APPLIANCE_HOME": str(APPLIANCE_HOME),
            "CONFIG_FILE": str(config_file),
            "INSTALLED_AT": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "CLI_LINK": str(CLI_LINK),
            "CREATECLUSTER_CONF": str(CREATECLUSTER_CONF),
        }
        for unit in units:
            values |= _service_values(unit)
        values |= {"PACKAGES_ADDED": " ".join(added), "SERVICES_DISABLED": ""}
        state = InstallState(STATE_FILE, values)
        state.write()
        report("created", f"state {STATE_FILE}")
        PACKAGES_BEFORE.unlink(missing_ok=True)
        return state
    new_units = [unit for unit in units if f"{state_key(unit)}_PACKAGE" not in state.values]
    for unit in new_units:
        state.values |= _service_values(unit)
    if added:
        state.add("PACKAGES_ADDED", *added)  # writes the file, the new services' lines too
    elif new_units:
        state.write()
    if added or new_units:
        report("changed", f"state {STATE_FILE} (added {' '.join(added + new_units)})")
    else:
        report("unchanged", f"state {STATE_FILE}")
    PACKAGES_BEFORE.unlink(missing_ok=True)
    return state


def ensure_packages(state: InstallState, settings: ApplianceSettings, host: Host, report: Report) -> None:
    """The Debian packages, with no service started by their installation and no default PostgreSQL cluster."""
    needed = packages(settings)
    missing = [p for p in needed if not package_installed(p)]
    if not missing:
        report("unchanged", f"Debian packages ({', '.join(needed)})")
        return
    if "postgresql" in missing and not CREATECLUSTER_CONF.exists():
        # Debian would create and start a "main" cluster on 5432; the appliance runs its own.
        CREATECLUSTER_CONF.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(
            CREATECLUSTER_CONF,
            "# Written by the appliance installer: no default cluster (the appliance runs its own).\n"
            "create_main_cluster = false\n",
            mode=0o644,
        )
    with _no_service_starts():
        state.add("PACKAGES_ADDED", *missing)  # first: after a failed apt run they are still ours
        report("installing", f"Debian packages {' '.join(missing)} (apt's output in {host.log})")
        # Fresh lists first; without a mirror (an offline box with the packages in apt's cache) install goes on.
        host.run(["apt-get", "update", "-qq"])
        if host.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]) != 0:
            raise ApplianceError(f"apt-get install {' '.join(missing)} failed (see {host.log}); re-run install.sh")
    report("installed", f"Debian packages {' '.join(missing)}")


@contextmanager
def _no_service_starts() -> Iterator[None]:
    """invoke-rc.d and deb-systemd-invoke honour policy-rc.d: no package starts its service while installed."""
    if POLICY_RC.exists():
        yield
        return
    write_atomic(POLICY_RC, "#!/bin/sh\nexit 101\n", mode=0o755)
    try:
        yield
    finally:
        POLICY_RC.unlink(missing_ok=True)


def ensure_debian_services_off(state: InstallState, report: Report) -> None:
    """Debian's redis-server, postgresql and prometheus services that came with our packages stay off: the
    appliance runs its own. Services that were there before are left exactly as they were."""
    if shutil.which("systemctl") is None:
        return
    changed = []
    for service in state.services:
        if service.package_before != "absent":
            continue
        if systemd.query("is-active", service.unit) == "active":
            systemd.systemctl("stop", service.unit)
            changed.append(f"stopped {service.unit}")
        if systemd.query("is-enabled", service.unit) == "enabled":
            systemd.systemctl("disable", "-q", service.unit)
            changed.append(f"disabled {service.unit}")
        state.add("SERVICES_DISABLED", service.unit)
    report("changed" if changed else "unchanged", "Debian's services" + (f" ({', '.join(changed)})" if changed else ""))


def ensure_cli_link(venv: Path, report: Report) -> None:
    target = venv / "bin" / "appliance"
    if CLI_LINK.is_symlink() and CLI_LINK.readlink() == target:
        report("unchanged", f"command {CLI_LINK}")
        return
    if CLI_LINK.exists() and not CLI_LINK.is_symlink():
        report("kept", f"{CLI_LINK}: not our link, left alone (run {target})")
        return
    CLI_LINK.parent.mkdir(parents=True, exist_ok=True)
    CLI_LINK.unlink(missing_ok=True)
    CLI_LINK.symlink_to(target)
    report("created", f"command {CLI_LINK}")


def livekit_source(settings: ApplianceSettings) -> str:
    """Where the bundled livekit-server comes from when no binary was given: "installed" or "go" (built from
    source through the Go module proxy); raises when neither is possible."""
    target = settings.livekit_server.bin
    if livekit_version(target):
        return "installed"
    if shutil.which("go"):
        return "go"
    raise ApplianceError(
        f"no livekit-server to bundle: pass --livekit-server-bin PATH (a livekit-server {bundled_livekit_version()}"
        " binary), install Go so that it can be built, or use an existing LiveKit with --livekit-url"
    )


def ensure_livekit(settings: ApplianceSettings, host: Host, report: Report) -> None:
    """The bundled livekit-server: kept when one is installed, else built with Go."""
    target, want = settings.livekit_server.bin, bundled_livekit_version()
    source = livekit_source(settings)
    if source == "installed":
        have = livekit_version(target)
        kept = f" (this installer would bundle {want})" if have != want else ""
        report("unchanged", f"livekit-server {target} ({have}){kept}")
        return
    with tempfile.TemporaryDirectory(prefix="appliance-livekit-") as scratch:
        built = Path(scratch) / "livekit-server"
        report("building", f"livekit-server {want} with Go (a few minutes the first time; output in {host.log})")
        if host.run([str(host.source / "scripts" / "build-livekit-server"), str(built)]) != 0:
            raise ApplianceError(
                f"building livekit-server {want} with Go failed (see {host.log}): pass --livekit-server-bin PATH"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, built.read_bytes(), mode=0o755)
    report("installed", f"livekit-server {target} ({livekit_version(target)})")


def preflight(settings: ApplianceSettings, layout: Layout, *, livekit_given: bool, report: Report) -> None:
    """What must hold before the box changes further (python3, python3-venv and the venv are all install.sh
    changed): the appliance's ports free (doctor's own check, on the ports the registry lists) and a livekit-server
    to bundle. Every problem is said, then nothing happens."""
    from appliance.doctor import check_ports

    problems = [f"{check.detail}: {check.fix}" for check in check_ports(settings, layout) if not check.ok]
    if settings.bundles_livekit and not livekit_given:
        try:
            livekit_source(settings)
        except ApplianceError as exc:
            problems.append(str(exc))
    if problems:
        raise ApplianceError("\n".join([*problems, "preflight failed: nothing changed but python3 and the venv"]))
    report("ok", "preflight (the appliance's ports are free or ours)")
