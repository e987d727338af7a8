"""supervisord's XML-RPC API over its unix socket: the one way the control plane reads and drives programs."""

from __future__ import annotations

import socket
import time
import xmlrpc.client
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

from appliance.errors import ApplianceError


class SupervisorDown(ApplianceError):
    """supervisord's socket is absent or refuses: the appliance is not running."""


class SupervisorDenied(ApplianceError):
    """The socket is there but we may not use it, or supervisord answers something we cannot read."""


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, STOPPING, EXITED, FATAL, UNKNOWN
    pid: int
    start: int  # epoch seconds of the last start; 0 when never started
    now: int
    exitstatus: int
    spawnerr: str
    description: str

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def uptime_s(self) -> int:
        return self.now - self.start if self.running and self.start else 0


# supervisord's fault codes (supervisor.xmlrpc.Faults) that mean "already in the state you asked for".
_ALREADY_STARTED = 60
_NOT_RUNNING = 70


class Supervisor:
    def __init__(self, socket_path: Path, timeout_s: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def _call(self, method: str, *args: object) -> Any:
        if not self.socket_path.exists():
            raise SupervisorDown(f"supervisord is not running (no socket at {self.socket_path})")
        transport = SupervisorTransport(serverurl=f"unix://{self.socket_path}")
        transport._get_connection = lambda: _TimedUnixConnection(str(self.socket_path), self.timeout_s)
        proxy: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return getattr(proxy.supervisor, method)(*args)
        except PermissionError:
            raise SupervisorDenied(
                f"permission denied on {self.socket_path}: run as root or the service user"
            ) from None
        except (ConnectionRefusedError, FileNotFoundError):
            raise SupervisorDown(f"supervisord is not running (nothing answers at {self.socket_path})") from None
        except (OSError, HTTPException, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorDenied(f"supervisord at {self.socket_path} does not answer properly: {exc}") from None
        finally:
            transport.close()

    def state(self) -> str:
        return cast(str, self._call("getState")["statename"])

    def supervisord_pid(self) -> int:
        return cast(int, self._call("getPID"))

    def processes(self) -> list[ProcessInfo]:
        return [_info(raw) for raw in self._call("getAllProcessInfo")]

    def process(self, name: str) -> ProcessInfo:
        return _info(self._call("getProcessInfo", name))

    def start(self, name: str, *, wait: bool = True) -> None:
        try:
            self._call("startProcess", name, wait)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != _ALREADY_STARTED:
                raise

    def stop(self, name: str, *, timeout_s: float = 0) -> bool:
        """Ask a program to stop; with ``timeout_s``, wait that long for it (a draining worker takes minutes).

        Returns whether it is stopped. The call itself never waits: a long wait would outlive the socket timeout.
        """
        try:
            self._call("stopProcess", name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != _NOT_RUNNING:
                raise
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process(name).state not in ("RUNNING", "STOPPING", "STARTING"):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def reload(self) -> tuple[list[str], list[str], list[str]]:
        """Re-read supervisord.conf: the groups added, changed and removed (nothing is applied yet)."""
        [[added, changed, removed]] = self._call("reloadConfig")
        return added, changed, removed

    def apply(self, added: list[str], changed: list[str], removed: list[str], *, stop_timeout_s: float) -> None:
        """What ``supervisorctl update`` does: stop and drop removed or changed groups, add new or changed ones.

        Every group holds one program of the same name.
        """
        for name in removed + changed:
            self.stop(name, timeout_s=stop_timeout_s)
            self._call("removeProcessGroup", name)
        for name in changed + added:
            self._call("addProcessGroup", name)

    def shutdown(self) -> None:
        self._call("shutdown")

    def wait_gone(self, timeout_s: float) -> bool:
        """After shutdown(): whether supervisord stopped answering within the time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.answers():
                return True
            time.sleep(0.2)
        return False

    def answers(self) -> bool:
        try:
            self.state()
        except SupervisorDown:
            return False
        except (SupervisorDenied, xmlrpc.client.Fault):  # a Fault: it answers, e.g. SHUTDOWN_STATE
            return True
        return True


class _TimedUnixConnection(UnixStreamHTTPConnection):  # type: ignore[misc]
    """supervisor's unix-socket connection, with a timeout: a hung supervisord must not hang the CLI."""

    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self.socketfile = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socketfile)


def _info(raw: dict[str, Any]) -> ProcessInfo:
    return ProcessInfo(
        name=raw["name"],
        state=raw["statename"],
        pid=raw["pid"],
        start=raw["start"],
        now=raw["now"],
        exitstatus=raw["exitstatus"],
        spawnerr=raw["spawnerr"],
        description=raw["description"],
    )
