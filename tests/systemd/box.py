"""A Debian 12 box whose PID 1 is a real systemd: a container on the tests' own Docker engine, the appliance
installed in it by ``./install.sh --yes`` from a copy of this checkout, so install.sh takes its systemd branch.

The box has no network (``--network none``; a veth carrying only 127.0.0.2/32 for the chat client's WebRTC).
What install.sh downloads was fetched when its image was built (``docker build --network host``): the Debian
packages into apt's archive cache with the lists that name them, the Python wheels into a wheelhouse that
/etc/pip.conf points at. install.sh then runs as on any box: ``apt-get update`` fails to reach the mirror and
keeps those lists, apt installs from the cache, pip from the wheelhouse.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import livekit
from harness.appliance import LIVEKIT_CLIENT_TGZ
from harness.checkout import copy_work_tree
from harness.chroot import HostNetwork, pristine_tarball
from harness.docker import Docker
from harness.freshroot import install_sh_packages
from harness.livekit import PrivateNetwork
from harness.servers import wait_until

CHECKOUT = Path(__file__).resolve().parents[2]
SOURCE = "/root/appliance"
LIVEKIT_BIN = "/root/livekit-server"
LIVEKIT_CLIENT = "/root/livekit-client.tgz"
INSTALL = (
    f"cd {SOURCE} && ./install.sh --yes --livekit-server-bin {LIVEKIT_BIN} --livekit-client-tgz {LIVEKIT_CLIENT}"
    " --node-ip 127.0.0.1"
)
APPLIANCE = "/usr/local/bin/appliance"
# Every port of the bundled LiveKit on 127.0.0.1, ICE on loopback; a short drain, so a stop with a room in
# conversation takes seconds (the drain is what is tested, not its length).
CONFIG = """\
[worker]
drain_timeout_s = 10

[livekit_server]
loopback_only = true
# Every ICE candidate signalled is logged, and the tests read them.
log_level = "debug"
"""

DOCKERFILE = """\
FROM {base} AS wheels
# The local certificate authorities this network needs (it may inspect TLS), as on a VM of this network.
COPY local-cas/ /usr/local/share/ca-certificates/
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
    ca-certificates python3-venv >/dev/null && update-ca-certificates >/dev/null
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /tmp/venv && PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    /tmp/venv/bin/pip download -q --require-hashes --no-deps -d /wheels -r /tmp/requirements.txt

FROM {base}
# D-Bus, as a Debian VM has it (systemd-run talks to systemd through it); then what install.sh installs,
# downloaded only (the box installs them itself, offline).
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dbus \\
    >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --download-only \\
    {packages} >/dev/null
COPY --from=wheels /wheels /var/cache/appliance-wheels
RUN printf '[global]\\nno-index = true\\nfind-links = /var/cache/appliance-wheels\\n' >/etc/pip.conf
"""

# docker run options that let systemd boot as PID 1 on this engine (cgroup v1, no --privileged).
SYSTEMD_RUN = (
    "--network", "none",
    "--cap-add", "SYS_ADMIN",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--tmpfs", "/run",
    "--tmpfs", "/run/lock",
    "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--env", "container=docker",
    "--stop-signal", "SIGRTMIN+3",  # systemd's own "halt"
)  # fmt: skip


def image(docker: Docker, host: HostNetwork) -> str:
    base = docker.imported(pristine_tarball(host))
    with tempfile.TemporaryDirectory(prefix="appliance-image-") as context:
        # What install.sh installs: the locked packages, build requirements included.
        shutil.copyfile(CHECKOUT / "requirements/appliance.txt", Path(context) / "requirements.txt")
        cas = Path(context) / "local-cas"
        cas.mkdir()
        for ca in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copyfile(ca, cas / ca.name)
        dockerfile = DOCKERFILE.format(base=base, packages=" ".join(install_sh_packages()))
        return docker.built("systemd-box", dockerfile, Path(context), [Path(context) / "requirements.txt"])


class SystemdBox:
    """One container running systemd; ``run`` executes a command in it as root, with a login's environment."""

    def __init__(self, docker: Docker, image_tag: str) -> None:
        self.docker = docker
        self.name = f"appliance-systemd-{uuid.uuid4().hex[:8]}"
        docker("run", "--detach", "--name", self.name, "--hostname", "box", *SYSTEMD_RUN, image_tag, "/sbin/init")
        try:
            docker.give_loopback_client_address(self.name)
            wait_until(self._booted, 120, "systemd in the container to finish booting")
        except BaseException:
            self.close()
            raise

    def _booted(self) -> bool:
        state = self.run("systemctl is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def run(
        self, command: str, *, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = self.docker("exec", "-i", self.name, "bash", "-lc", command, input=input, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{command!r} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p``: systemd's own view of a unit."""
        out = self.run(f"systemctl show {shlex.quote(unit)} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def copy_in(self, source: Path, inside: str) -> None:
        self.docker("cp", str(source), f"{self.name}:{inside}")

    def copy_checkout(self) -> None:
        """The work tree as git sees it (harness.checkout)."""
        with tempfile.TemporaryDirectory(prefix="appliance-checkout-") as tmp:
            copy_work_tree(Path(tmp) / "appliance")
            self.copy_in(Path(tmp) / "appliance", SOURCE)

    def install(self) -> subprocess.CompletedProcess[str]:
        """The checkout, a livekit-server and the test config in; then install.sh as a newcomer runs it."""
        self.copy_checkout()
        self.copy_in(livekit.binary(), LIVEKIT_BIN)
        self.copy_in(LIVEKIT_CLIENT_TGZ, LIVEKIT_CLIENT)
        self.run("mkdir -p /etc/appliance && cat >/etc/appliance/appliance.toml", input=CONFIG)
        return self.run(INSTALL, timeout=1500)

    def close(self) -> None:
        self.docker("rm", "--force", "--volumes", self.name, check=False, timeout=120)


@contextlib.contextmanager
def systemd_box(private_network: PrivateNetwork | None) -> Iterator[SystemdBox]:
    """A booted box, not yet installed; removed after."""
    if private_network is None:
        pytest.skip("a container with systemd needs root")
    host = HostNetwork(private_network.host_namespace)
    docker = Docker(host).start()
    box = SystemdBox(docker, image(docker, host))
    try:
        yield box
    finally:
        box.close()


def wait_active(box: SystemdBox, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while box.run("systemctl is-active appliance", check=False).stdout.strip() != "active":
        if time.monotonic() > deadline:
            raise AssertionError(
                "appliance.service not active:\n" + box.run("systemctl status appliance", check=False).stdout
            )
        time.sleep(0.5)


# The unit's lines a transient copy of its sandbox leaves out: how it runs and stops, not what it may do.
NOT_SANDBOX = frozenset({
    "Type", "ExecStart", "Restart", "RestartSec", "SyslogIdentifier", "Environment", "KillMode", "TimeoutStopSec",
    "OOMPolicy", "RuntimeDirectory", "RuntimeDirectoryMode", "User", "Group",
})  # fmt: skip


def sandbox(box: SystemdBox) -> list[tuple[str, str]]:
    """The [Service] directives of the installed unit that confine its processes, in file order."""
    text = box.run("cat /etc/systemd/system/appliance.service").stdout
    section, found = "", []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            if key not in NOT_SANDBOX:
                found.append((key, value))
    return found


PROBE = "/usr/local/lib/sandbox_probe.py"
PROBE_DIR = "/srv/probe"  # the service user's, outside every ReadWritePaths


def prepare_probe(box: SystemdBox) -> None:
    """The probe script, and what it looks for: a file in the box's /tmp and /home, a kernel module directory."""
    box.copy_in(Path(__file__).with_name("sandbox_probe.py"), PROBE)
    box.run(
        f"chmod 0644 {PROBE} && mkdir -p {PROBE_DIR} /usr/lib/modules/probe /home/someone && chown appliance "
        f"{PROBE_DIR} && touch /tmp/host-file /home/someone/file"
    )


def probe(box: SystemdBox, directives: list[tuple[str, str]]) -> dict[str, Any]:
    """What sandbox_probe.py sees in a transient unit run as the service user under ``directives``; empty when the
    sandbox killed it (a forbidden system call without SystemCallErrorNumber is SIGSYS)."""
    import json

    props = " ".join(f"-p {shlex.quote(f'{k}={v}')}" for k, v in directives)
    done = box.run(
        f"systemd-run --wait --pipe --quiet -p User=appliance -p Group=appliance {props} "
        f"/usr/bin/python3 {PROBE} {PROBE_DIR}",
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    return dict(json.loads(lines[-1])) if done.returncode == 0 and lines else {}
