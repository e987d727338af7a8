"""systemctl, one way for every module: against the running systemd, or, where none runs (a container, a chroot),
against the unit files (enable, disable and is-enabled work there; start, stop and is-active need systemd)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from appliance.errors import ApplianceError


def runs() -> bool:
    """Whether systemd is PID 1 (not in a container, a chroot or this CI machine)."""
    return Path("/run/systemd/system").is_dir()


def _argv(args: tuple[str, ...]) -> list[str]:
    return ["systemctl", *([] if runs() else ["--root=/"]), *args]


def systemctl(*args: str) -> None:
    """Run systemctl (on the unit files when no systemd runs); a failure is one line naming it."""
    done = subprocess.run(_argv(args), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout or "").strip().splitlines()
        raise ApplianceError(f"systemctl {' '.join(args)} failed: {reason[-1] if reason else done.returncode}")


def query(verb: str, unit: str) -> str:
    """``is-enabled`` or ``is-active``'s answer for ``unit``: "absent" when it says nothing, "unknown" when it
    cannot tell (no systemctl; is-active without a running systemd)."""
    if shutil.which("systemctl") is None or (verb == "is-active" and not runs()):
        return "unknown"
    done = subprocess.run(_argv((verb, unit)), capture_output=True, text=True, check=False)
    return done.stdout.strip() or "absent"
