"""A private livekit-server on free loopback ports, and a network namespace where WebRTC clients can reach it.

Every address the server listens on or advertises is 127.0.0.1: no TCP ICE listener (it would bind all interfaces),
no external-IP discovery, and a STUN server on a loopback port nothing listens on, so clients never get LiveKit's
default public STUN servers.

The clients need ``PrivateNetwork``: libwebrtc never gathers candidates on an interface flagged LOOPBACK (its
default ``network_ignore_mask``), so on a host with only ``lo`` they find no candidates, and on a host with a real
interface they offer that interface's address and the server sends connectivity checks to it.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from livekit.api import AccessToken, LiveKitAPI, VideoGrants

from harness.servers import free_port, wait_until

INSTALL_HINT = (
    "livekit-server not found: set LIVEKIT_SERVER_BIN, put livekit-server on PATH, or run "
    "`scripts/build-livekit-server ~/go/bin/server` (the version in config/livekit-server.version)"
)

# livekit-server reads these as configuration (urfave/cli env sources, LIVEKIT_<YAML_PATH> for every field); an
# ambient one would override our YAML, so the child never sees them.
_SERVER_ENV = {"NODE_IP", "UDP_PORT", "REDIS_HOST", "REDIS_PASSWORD"}


def binary() -> Path:
    """The livekit-server executable: $LIVEKIT_SERVER_BIN, then PATH, then ~/go/bin/server."""
    explicit = os.environ.get("LIVEKIT_SERVER_BIN")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RuntimeError(f"LIVEKIT_SERVER_BIN={explicit} is not an executable file. {INSTALL_HINT}")
        return path
    found = shutil.which("livekit-server")
    if found:
        return Path(found)
    # `go install .../cmd/server` names the binary `server`, a name other programs use too: check it.
    for candidate in (shutil.which("server"), str(Path.home() / "go" / "bin" / "server")):
        if candidate and os.access(candidate, os.X_OK) and is_livekit_server(candidate):
            return Path(candidate)
    raise RuntimeError(INSTALL_HINT)


def is_livekit_server(path: str) -> bool:
    from appliance.host import livekit_version

    return livekit_version(Path(path)) is not None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1 (also as an IPv4-mapped address)."""
    address = address.strip("[]").removeprefix("::ffff:")
    return address.startswith("127.") or address == "::1"


class LiveKitServer:
    """livekit-server without Redis, HTTP/WebSocket and WebRTC (one UDP port) on 127.0.0.1 only."""

    def __init__(self, *, log_level: str = "info") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="appliance-livekit-"))
        self.port = free_port()
        self.udp_port = free_udp_port()
        # Nothing listens here: a client's STUN binding request dies on loopback instead of going to Google.
        self.stun_port = free_udp_port()
        self.api_key = "API" + secrets.token_hex(6)
        self.api_secret = secrets.token_urlsafe(32)  # 43 characters; the server wants at least 32
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_after_s: float | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "livekit.yaml"

    @property
    def log_path(self) -> Path:
        return self.dir / "livekit.log"

    @property
    def stun_server(self) -> str:
        return f"127.0.0.1:{self.stun_port}"

    def config(self) -> str:
        """The YAML livekit-server runs with (field names: pkg/config/config.go, mediatransportutil rtcconfig)."""
        return f"""\
port: {self.port}
bind_addresses: [127.0.0.1]
rtc:
  # Advertise exactly this address; with node_ip set and use_external_ip off, no STUN lookup at startup.
  node_ip: 127.0.0.1
  use_external_ip: false
  # Loopback is filtered out of ICE candidates unless this is on.
  enable_loopback_candidate: true
  # One UDP mux socket per address that passes the filters below: 127.0.0.1:udp_port and nothing else.
  udp_port: {self.udp_port}
  # 0 disables ICE over TCP (the default is 7881), whose listener binds every interface whatever
  # bind_addresses says.
  tcp_port: 0
  interfaces:
    includes: [lo]
  ips:
    includes: [127.0.0.1/32]
  # Handed to clients as their ICE servers; left empty, clients get Google's and Twilio's public STUN.
  stun_servers: [{self.stun_server}]
  # No multicast DNS (the default, stated): .local candidates would mean packets to 224.0.0.251.
  use_mdns: false
# As the bundled config/livekit.yaml.j2: jobs for workers up to a load of 1.0 (rooms / max_rooms), not 0.7.
agents:
  target_load: 1.0
keys:
  {self.api_key}: {self.api_secret}
logging:
  level: {self.log_level}
"""

    def start(self, timeout: float = 30) -> LiveKitServer:
        self.config_path.write_text(self.config())
        self.config_path.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not (k.startswith("LIVEKIT_") or k in _SERVER_ENV)}
        executable = binary()
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(executable), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.dir,
            )
        wait_until(self._ready, timeout, f"livekit-server on {self.http_url} (log: {self.log_path})")
        self.ready_after_s = time.monotonic() - started
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"livekit-server exited with {self.proc.returncode}: {self.log_tail()}")
        with urllib.request.urlopen(self.http_url + "/", timeout=1) as response:
            return bool(response.status == 200)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def token(self, identity: str, room: str, **grants: Any) -> str:
        """A join token for ``room``; ``grants`` are extra VideoGrants fields (can_publish=False, hidden=True...)."""
        video = VideoGrants(room_join=True, room=room, **grants)
        return (
            AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(identity)
            .with_grants(video)
            .to_jwt()
        )

    def api(self) -> LiveKitAPI:
        """The server API client; use it as ``async with server.api() as lk:`` (it owns an aiohttp session)."""
        return LiveKitAPI(self.http_url, self.api_key, self.api_secret, failover=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, grace: float = 2, timeout: float = 15) -> None:
        """SIGTERM; after ``grace`` a second SIGTERM (the server's forced stop); after ``timeout`` SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
        # The first SIGTERM can be lost: HTTP answers 100 ms before the server marks itself running, and a stop in
        # between returns early (pkg/service/server.go:293-296, 329). A graceful stop also waits, without end, for
        # every participant to leave. The second signal is handled as a forced stop (cmd/server/main.go:309-316).
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


CLONE_NEWNET = 0x40000000


class PrivateNetwork:
    """A new network namespace for the calling thread: ``lo`` up, and a veth pair with no route anywhere.

    The veth end carries 127.0.0.2/32 and no IPv6, so libwebrtc has a non-LOOPBACK interface whose only address is
    a loopback one: every candidate is 127.x, and every packet stays on ``lo`` of a namespace that has nothing
    else. Namespaces belong to threads: threads and processes started from this thread after ``enter`` (the
    livekit-server, the rtc SDK's FFI runtime, asyncio executors) are inside, and stay inside after ``leave``.
    Needs CAP_SYS_ADMIN. (A ``dummy`` interface would do, but not every kernel has the module; veth is built in.)
    """

    CLIENT_ADDRESS = "127.0.0.2"

    def __init__(self) -> None:
        self._home: int | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)

    @property
    def host_namespace(self) -> int:
        """A descriptor of the network namespace we left (the host's), for the few commands that must reach the
        package registries (the fresh-machine tests' downloads)."""
        if self._home is None:
            raise RuntimeError("not inside the private network")
        return self._home

    def enter(self) -> PrivateNetwork:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PrivateNetwork moves the calling thread only: enter it from the main thread")
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if self._libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            os.close(home)
            raise PermissionError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)} (needs root or CAP_SYS_ADMIN)")
        self._home = home
        try:
            self._configure()
        except BaseException:
            self.leave()
            raise
        return self

    def _configure(self) -> None:
        ip = shutil.which("ip") or "/usr/sbin/ip"
        for args in (["link", "set", "lo", "up"], *self.client_interface()):
            subprocess.run([ip, *args], check=True, stdin=subprocess.DEVNULL, capture_output=True)

    @classmethod
    def client_interface(cls) -> list[list[str]]:
        """``ip`` commands for the veth pair whose one end carries only CLIENT_ADDRESS (no IPv6, no route)."""
        return [
            ["link", "add", "lkclient0", "type", "veth", "peer", "name", "lkclient1"],
            ["link", "set", "lkclient0", "addrgenmode", "none"],
            ["link", "set", "lkclient1", "addrgenmode", "none"],
            ["addr", "add", f"{cls.CLIENT_ADDRESS}/32", "dev", "lkclient0"],
            ["link", "set", "lkclient0", "up"],
            ["link", "set", "lkclient1", "up"],
        ]

    def leave(self) -> None:
        """Back to the namespace we came from; the private one lives on while anything started inside it does."""
        if self._home is not None:
            if self._libc.setns(self._home, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back to the original network namespace: {os.strerror(err)}")
            os.close(self._home)
            self._home = None

    @staticmethod
    def addresses() -> list[str]:
        """Every address configured in the current thread's namespace."""
        out = subprocess.run(
            [shutil.which("ip") or "/usr/sbin/ip", "-o", "addr", "show"], check=True, capture_output=True, text=True
        ).stdout
        return [line.split()[3].split("/")[0] for line in out.splitlines()]


# An ICE candidate as SDP and trickle messages carry it: "candidate:<foundation> <component> <proto> <priority> <ip>
# <port> typ <type>"; livekit-server logs every one it sends and receives at debug level.
CANDIDATE = re.compile(r"candidate:\S+ \d+ (?P<proto>udp|tcp) \d+ (?P<address>\S+) (?P<port>\d+) typ (?P<type>\w+)")


def logged_candidates(server: LiveKitServer) -> set[tuple[str, str, str]]:
    """(address, protocol, type) of every candidate in the server's signalling, both directions."""
    return candidates_in(server.log_path.read_text(errors="replace"))


def candidates_in(log: str) -> set[tuple[str, str, str]]:
    """(address, protocol, type) of every candidate in a debug-level livekit-server log."""
    return {(m["address"], m["proto"], m["type"]) for m in CANDIDATE.finditer(log)}
