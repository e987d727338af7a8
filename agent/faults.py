"""Fault injection for crash tests: named points that SIGKILL the process when armed.

Armed only through the environment (APPLIANCE_FAULT_POINTS=name,name), read once by an entry point. Before
dying, the point appends its name to APPLIANCE_FAULT_MARKER so a test can tell that the point was reached.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

_armed: frozenset[str] = frozenset()
_marker: str | None = None


def arm_from_env(environ: Mapping[str, str]) -> None:
    global _armed, _marker
    _armed = frozenset(p for p in environ.get("APPLIANCE_FAULT_POINTS", "").split(",") if p)
    _marker = environ.get("APPLIANCE_FAULT_MARKER")


def point(name: str) -> None:
    if name not in _armed:
        return
    if _marker:
        fd = os.open(_marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{name}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
