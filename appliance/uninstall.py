"""Removing the appliance: stop it, delete what the installers made, put Debian's own services back as they were.

Data (conversations, Redis and PostgreSQL files), logs and the service user are kept unless ``purge``. What
install.sh found on the box before its first run (Debian's redis-server and postgresql services, the packages it
added) is read from its state file; without one (an appliance installed by ``appliance install`` alone, e.g. in a
test prefix) nothing outside the settings' own paths is touched.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
import xmlrpc.client
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from appliance import systemd
from appliance.errors import ApplianceError
from appliance.install_state import STATE_FILE, InstallState
from appliance.layout import Layout
from appliance.settings import ApplianceSettings
from appliance.supervisor import Supervisor, SupervisorDenied, SupervisorDown
from appliance.systemd import systemctl
from appliance.unit import UNIT_NAME

# Directories never deleted whole, whatever a setting says.
_NEVER_DELETE = {
    Path(p)
    for p in (
        "/",
        "/etc",
        "/opt",
        "/usr",
        "/usr/local",
        "/var",
        "/var/lib",
        "/var/log",
        "/run",
        "/tmp",
        "/var/tmp",
        "/home",
        "/root",
        "/srv",
        "/bin",
        "/sbin",
        "/lib",
        "/boot",
    )
}
# How long the appliance's processes get to leave after supervisord stopped, before SIGTERM, then SIGKILL.
_LEAVE_S = 10.0
# supervisor.xmlrpc.Faults.SHUTDOWN_STATE
_SHUTDOWN_STATE = 6

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What ``uninstall`` will do; ``describe()`` says it before anything happens."""

    layout: Layout
    user: str
    purge: bool
    state_file: Path
    state: InstallState | None
    systemd: bool

    @property
    def home(self) -> Path | None:
        """install.sh's /opt/appliance (venv, livekit-server); None when install.sh did not install this one."""
        return self.state.path("APPLIANCE_HOME") if self.state else None

    @property
    def removed(self) -> list[Path]:
        """What goes, in order; the directory holding the running venv comes last."""
        layout = self.layout
        paths = [layout.unit_file, layout.etc_dir, layout.run_dir]
        if self.state:
            # The `appliance` link on PATH, only while it is ours (a link), and postgresql-common's setting.
            link = self.state.path("CLI_LINK")
            if link and link.is_symlink():
                paths.append(link)
            conf = self.state.path("CREATECLUSTER_CONF")
            if conf:
                paths.append(conf)
        if self.purge:
            paths += [layout.data_dir, layout.log_dir, layout.spool_dir]
            if self.state:
                paths.append(self.state_file)
        if self.home:
            paths.append(self.home)
        # A path inside one already listed goes with it.
        return [p for i, p in enumerate(paths) if not any(_inside(p, q) for q in paths[:i])]

    @property
    def kept(self) -> list[Path]:
        if self.purge:
            return []
        # The secrets stay with the data: PostgreSQL's password is inside the kept cluster, and a reinstall
        # reuses the file (front ends may hold tokens signed with the LiveKit key too).
        return [self.layout.data_dir, self.layout.log_dir, self.layout.secrets_file]

    def describe(self) -> list[str]:
        lines = ["stop the appliance" + (" and disable its systemd unit" if self.systemd else "")]
        lines += [f"remove {_label(p, self.kept)}" for p in self.removed if p.exists() or p.is_symlink()]
        if self.purge:
            lines.append(f"delete the user and group {self.user!r}")
            lines.append("the conversations are deleted: `appliance backup` first if you may want them")
        else:
            lines += [f"keep {p} (--purge deletes it)" for p in self.kept if p.exists()]
        if self.state and self.state.services:
            lines.append("leave Debian's own " + " and ".join(s.unit for s in self.state.services) + " as found")
        return lines


@dataclass
class Report:
    done: list[str] = field(default_factory=list)

    def add(self, line: str, progress: Progress) -> None:
        self.done.append(line)
        progress(line)


def plan(settings: ApplianceSettings, layout: Layout, *, purge: bool, state_file: Path = STATE_FILE) -> Plan:
    state = InstallState.read(state_file)
    # install.sh's state is about the appliance of the config it installed; another one (a test prefix) on the
    # same box must not remove /opt/appliance.
    if state and state.path("CONFIG_FILE") not in (None, layout.config_file):
        state = None
    return Plan(
        layout=layout,
        user=settings.control.user,
        purge=purge,
        state_file=state_file,
        state=state,
        systemd=systemd.runs(),
    )


def uninstall(plan: Plan, *, stop_timeout_s: float, progress: Progress) -> Report:
    """Carry out ``plan``: afterwards no process of the appliance runs and none of its files is left
    (but the data, logs and user when not purging)."""
    for path in plan.removed:
        if path.resolve() in _NEVER_DELETE:
            raise ApplianceError(f"refusing to delete {path}: check the paths in {plan.layout.config_file}")
    report = Report()
    _stop(plan, stop_timeout_s, report, progress)
    _end_leftovers(plan, report, progress)
    _remove_unit(plan, report, progress)
    _restore_debian_services(plan, report, progress)
    if plan.purge:
        _remove_user(plan.user, report, progress)
    # Last: the venv this command runs from. Python has loaded what it needs; nothing is imported after this.
    for path in plan.removed:
        if _remove(path, keep=plan.kept):
            report.add(f"removed {_label(path, plan.kept)}", progress)
    if plan.purge and plan.state_file.parent.is_dir() and not any(plan.state_file.parent.iterdir()):
        plan.state_file.parent.rmdir()
    for path in plan.kept:
        if path.exists():
            report.add(f"kept {path} (--purge deletes it)", progress)
    if plan.state and plan.state.words("PACKAGES_ADDED"):
        packages = " ".join(plan.state.words("PACKAGES_ADDED"))
        report.add(f"left the Debian packages install.sh added: {packages} (apt-get purge them if unused)", progress)
    return report


def _stop(plan: Plan, timeout_s: float, report: Report, progress: Progress) -> None:
    unit = plan.layout.unit_file
    if plan.systemd and unit.exists():
        progress(f"stopping {UNIT_NAME} (the worker drains its rooms first: up to {timeout_s:.0f} s)")
        systemctl("disable", "--now", UNIT_NAME)
        report.add(f"stopped and disabled {UNIT_NAME}", progress)
        return
    sup = Supervisor(plan.layout.supervisor_socket)
    try:
        pid = sup.supervisord_pid()
    except SupervisorDown:
        return
    except SupervisorDenied as exc:
        raise ApplianceError(f"cannot stop the appliance: {exc}") from None
    progress(f"stopping supervisord (pid {pid}; the worker drains its rooms first: up to {timeout_s:.0f} s)")
    try:
        sup.shutdown()
    except xmlrpc.client.Fault as fault:
        # SHUTDOWN_STATE: a stop is already under way; wait for it like for ours.
        if fault.faultCode != _SHUTDOWN_STATE:
            raise
    # Its pid, not its socket: while it stops programs supervisord still answers, with SHUTDOWN_STATE faults.
    if not _wait_gone([pid], timeout_s):
        raise ApplianceError(f"supervisord (pid {pid}) did not stop within {timeout_s:.0f} s: see `appliance logs`")
    report.add(f"stopped the appliance (supervisord pid {pid})", progress)


def our_processes(plan: Plan) -> list[psutil.Process]:
    """Processes of this appliance, and their descendants: those started with its config (APPLIANCE_CONFIG) or
    from its directories, and, on a box install.sh installed, everything its user runs.

    The user alone does not decide elsewhere: appliances installed into test prefixes share it. Only processes
    under our root directory count (in a chroot, /proc also shows the host's).
    """
    uid: int | None = None
    if plan.home is not None:
        with suppress(KeyError):
            uid = pwd.getpwnam(plan.user).pw_uid or None  # never root's processes
    layout = plan.layout
    config = str(layout.config_file)
    markers = [f"{p}/" for p in (plan.home, layout.etc_dir, layout.data_dir, layout.run_dir) if p]
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    candidates: dict[int, psutil.Process] = {}
    parent: dict[int, int] = {}
    ours: set[int] = set()
    for proc in psutil.process_iter(["uids", "cmdline", "exe", "status", "ppid"]):
        if proc.pid in spared or proc.info["status"] == psutil.STATUS_ZOMBIE or not _same_root(proc.pid):
            continue
        candidates[proc.pid] = proc
        parent[proc.pid] = proc.info["ppid"]
        uids = proc.info["uids"]
        words = [*(proc.info["cmdline"] or []), proc.info["exe"] or ""]
        if (
            (uid is not None and uids is not None and uids.real == uid)
            or any(marker in word for word in words for marker in markers)
            or _environ(proc).get("APPLIANCE_CONFIG") == config
        ):
            ours.add(proc.pid)
    grown = True
    while grown:
        more = {pid for pid, ppid in parent.items() if ppid in ours} - ours
        ours |= more
        grown = bool(more)
    return [candidates[pid] for pid in sorted(ours)]


def _same_root(pid: int) -> bool:
    """Whether the process sees the same / as we do (in a chroot, /proc also shows the host's processes)."""
    try:
        theirs, ours = Path(f"/proc/{pid}/root").stat(), Path("/").stat()
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.Error, OSError):
        return {}


def _end_leftovers(plan: Plan, report: Report, progress: Progress) -> None:
    """After supervisord: anything of ours still running (an orphan of an earlier crash) gets TERM, then KILL."""
    procs = our_processes(plan)
    if procs:
        _, procs = psutil.wait_procs(procs, timeout=_LEAVE_S)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not procs:
            return
        names = []
        for proc in procs:
            try:
                names.append(f"{proc.name()} (pid {proc.pid})")
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        report.add(f"sent {sig.name} to {', '.join(names)}", progress)
        _, procs = psutil.wait_procs(procs, timeout=_LEAVE_S)
    if procs:
        raise ApplianceError(f"processes of the appliance survived SIGKILL: {', '.join(str(p.pid) for p in procs)}")


def _wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _alive(pid: int) -> bool:
    """Running: a zombie (exited, its parent not told yet) is gone for our purposes."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _remove_unit(plan: Plan, report: Report, progress: Progress) -> None:
    unit = plan.layout.unit_file
    # Enablement links (made by systemctl enable, with or without a running systemd).
    links = list(unit.parent.glob(f"*.wants/{UNIT_NAME}")) if unit.parent.is_dir() else []
    for link in links:
        link.unlink(missing_ok=True)
    if unit.exists() or unit.is_symlink():
        unit.unlink()
        if plan.systemd:
            systemctl("daemon-reload")
        report.add(f"removed {unit}", progress)


def _restore_debian_services(plan: Plan, report: Report, progress: Progress) -> None:
    """Each Debian service back to how install.sh found it: one that came with a package it added stays off."""
    if not plan.state or not shutil.which("systemctl"):
        return
    for service in plan.state.services:
        enabled = systemd.query("is-enabled", service.unit)
        want_enabled = not (service.package_before == "absent" or service.enabled_before != "enabled")
        if want_enabled and enabled != "enabled":
            systemctl("enable", service.unit)
            report.add(f"re-enabled Debian's {service.unit}, as it was", progress)
        elif not want_enabled and enabled == "enabled" and service.package_before == "absent":
            systemctl("disable", service.unit)
            report.add(f"disabled Debian's {service.unit}, which came with install.sh's packages", progress)
        if plan.systemd:
            active = systemd.query("is-active", service.unit)
            if service.active_before == "active" and active != "active":
                systemctl("start", service.unit)
                report.add(f"started Debian's {service.unit}, as it was", progress)
            elif service.package_before == "absent" and active == "active":
                systemctl("stop", service.unit)
                report.add(f"stopped Debian's {service.unit}, which came with install.sh's packages", progress)


def _remove_user(user: str, report: Report, progress: Progress) -> None:
    if user == "root":
        return
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        pass
    else:
        # Ours have stopped: anything still running as the user belongs to another appliance (a test prefix).
        others = [
            p.pid
            for p in psutil.process_iter(["uids"])
            if p.info["uids"] and p.info["uids"].real == uid and _same_root(p.pid)
        ]
        if others:
            report.add(
                f"kept the user {user!r}: other processes run as it (pids {', '.join(map(str, others))})", progress
            )
            return
        _run(["userdel", user])
        report.add(f"deleted the user {user!r}", progress)
    try:
        grp.getgrnam(user)
    except KeyError:
        return
    _run(["groupdel", user])
    report.add(f"deleted the group {user!r}", progress)


def _run(argv: list[str]) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        reason = (out.stderr or out.stdout).strip().splitlines()
        raise ApplianceError(f"{' '.join(argv)} failed: {reason[-1] if reason else out.returncode}")


def _remove(path: Path, keep: list[Path]) -> bool:
    """Delete a file or a tree, but what ``keep`` names inside it; whether anything was there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if not path.is_dir():
        return False
    kept_inside = [k for k in keep if _inside(k, path)]
    if not kept_inside:
        shutil.rmtree(path)
        return True
    for child in path.iterdir():
        if child in kept_inside:
            continue
        if any(_inside(k, child) for k in kept_inside):
            _remove(child, keep)
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return True


def _label(path: Path, kept: list[Path]) -> str:
    inside = [k.relative_to(path) for k in kept if _inside(k, path)]
    return f"{path} (but {', '.join(map(str, inside))})" if inside else str(path)


def _inside(path: Path, parent: Path) -> bool:
    return path != parent and path.is_relative_to(parent)
