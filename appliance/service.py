"""Starting and stopping supervisord (through systemd where it runs), and restarting programs, gracefully."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from appliance import systemd
from appliance.errors import ApplianceError
from appliance.layout import Layout
from appliance.probes import probe_worker
from appliance.programs import SERVICES, WORKERS
from appliance.settings import ApplianceSettings
from appliance.supervisor import Supervisor
from appliance.unit import UNIT_NAME, worker_stopwaitsecs

Progress = Callable[[str], None]


def start(settings: ApplianceSettings, layout: Layout, *, timeout_s: float = 60) -> bool:
    """Start supervisord unless it already answers; returns whether it was started now."""
    sup = Supervisor(layout.supervisor_socket)
    if sup.answers():
        return False
    if systemd.runs() and layout.unit_file.exists():
        systemd.systemctl("start", UNIT_NAME)
    else:
        _start_background(settings, layout)
    deadline = time.monotonic() + timeout_s
    while not sup.answers():
        if time.monotonic() > deadline:
            raise ApplianceError(f"supervisord did not start within {timeout_s:.0f} s: {_start_error(layout)}")
        time.sleep(0.2)
    return True


def _start_log(layout: Layout) -> Path:
    return layout.log_dir / "supervisord.start.log"


def _start_error(layout: Layout) -> str:
    try:
        lines = [line for line in _start_log(layout).read_text().splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[0][:300] if lines else f"see {layout.supervisord_log}"


def supervisord_env(layout: Layout) -> dict[str, str]:
    """supervisord's environment, which its programs inherit: where the config is, nothing of the caller's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(layout.data_dir),
        "LANG": "C.UTF-8",
        "APPLIANCE_CONFIG": str(layout.config_file),
    }


def _start_background(settings: ApplianceSettings, layout: Layout) -> None:
    """Without systemd: the same supervisord, in its own session, as the service user."""
    user = pwd.getpwnam(settings.control.user)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    os.chown(layout.run_dir, user.pw_uid, user.pw_gid)
    layout.run_dir.chmod(0o750)
    as_user = os.geteuid() == 0 and user.pw_uid != 0
    env = supervisord_env(layout)
    # -s: no copy of its log on stdout (it has its logfile); what it prints before that (a bad config) is kept.
    with _start_log(layout).open("w") as out:
        subprocess.Popen(
            [str(layout.bin("supervisord")), "-n", "-s", "-c", str(layout.supervisord_conf)],
            user=user.pw_uid if as_user else None,
            group=user.pw_gid if as_user else None,
            extra_groups=[] if as_user else None,
            env=env,
            cwd="/",
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def stop(settings: ApplianceSettings, layout: Layout) -> bool:
    """Stop every program in reverse order, then supervisord; returns whether anything was running."""
    sup = Supervisor(layout.supervisor_socket)
    if not sup.answers():
        return False
    if systemd.runs() and layout.unit_file.exists():
        systemd.systemctl("stop", UNIT_NAME)
        return True
    sup.shutdown()
    # supervisord stops its programs in reverse priority order, the worker's drain first.
    if not sup.wait_gone(worker_stopwaitsecs(settings.worker.drain_timeout_s) + 60):
        raise ApplianceError("supervisord did not stop in time; see `appliance logs`")
    return True


# What `appliance restart` restarts when no program is named: those whose restart costs no participant anything.
# Restarting livekit drops every participant's connection, and Redis or PostgreSQL sends the rooms' writes to the
# next tier while it is down: an operator names them to get that.
DEFAULT_RESTART = ("flusher", "worker")


def restart(
    settings: ApplianceSettings, layout: Layout, names: Iterable[str], *, now: bool, progress: Progress
) -> list[str]:
    """Restart programs (the flusher and worker when ``names`` is empty) in start order, the worker gracefully
    unless ``now``.

    Returns the programs restarted.
    """
    sup = Supervisor(layout.supervisor_socket)
    known = [name for name in SERVICES if name in {p.name for p in sup.processes()}]  # in start order
    wanted = list(names) or [name for name in known if name in DEFAULT_RESTART]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ApplianceError(f"no program {unknown[0]!r}: choose from {', '.join(known)}")
    for name in known:
        if name not in wanted:
            continue
        if name == "worker":
            restart_worker(settings, layout, now=now, progress=progress)
            continue
        progress(f"restarting {name}")
        sup.stop(name, timeout_s=120)
        sup.start(name)
    return [name for name in known if name in wanted]


def running_worker(sup: Supervisor) -> str | None:
    for name in WORKERS:
        if sup.process(name).state in ("RUNNING", "STARTING"):
            return name
    return None


def restart_worker(settings: ApplianceSettings, layout: Layout, *, now: bool, progress: Progress) -> str:
    """Graceful: the idle worker starts and registers with LiveKit, then the running one drains (its rooms
    go on until they end or the drain timeout; one still running then is resumed by the new worker).

    Returns the name of the worker now running.
    """
    sup = Supervisor(layout.supervisor_socket)
    old = running_worker(sup)
    if now or old is None:
        for name in WORKERS:
            sup.stop(name, timeout_s=5)
        progress("starting worker")
        sup.start("worker")
        wait_registered(settings, "worker")
        return "worker"
    new = WORKERS[1] if old == WORKERS[0] else WORKERS[0]
    progress(f"starting {new} beside {old}")
    sup.start(new)
    wait_registered(settings, new)
    progress(f"{new} registered; {old} drains (up to {settings.worker.drain_timeout_s} s)")
    if not sup.stop(old, timeout_s=worker_stopwaitsecs(settings.worker.drain_timeout_s) + 10):
        raise ApplianceError(f"{old} did not stop in time")
    return new


def wait_registered(settings: ApplianceSettings, worker: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe_worker(settings, worker)
        if found.registered and not found.draining:
            return
        time.sleep(0.5)
    raise ApplianceError(
        f"{worker} did not register with LiveKit within {timeout_s:.0f} s: see `appliance logs worker`"
    )
