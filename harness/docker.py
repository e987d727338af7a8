"""A Docker engine of the tests' own, and the images they build, cached by the hash of what goes into them.

The engine is Debian's dockerd, started in the host's network namespace (its builds download through it) with
``--bridge=none --iptables=false``: no container ever gets a private-range address, and nothing is pulled from a
registry. It keeps running after the session, so later runs on this machine reuse its image cache. The base image
is ``docker import`` of the fresh-machine tests' debootstrap tarball; an image built on it is tagged with a hash
of its Dockerfile and inputs, so it is built once. Builds run with ``--network host`` (downloads only); the
containers the tests run get ``--network none`` and, where a WebRTC client needs one, a veth carrying only
127.0.0.2/32 inside their own namespace (see ``PrivateNetwork``).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import docker

from harness import livekit
from harness.appliance import LIVEKIT_CLIENT_TGZ
from harness.checkout import copy_work_tree
from harness.chroot import HostNetwork, pristine_tarball
from harness.livekit import PrivateNetwork
from harness.servers import wait_until

DOCKERD = Path("/usr/sbin/dockerd")
DOCKER = Path("/usr/bin/docker")  # docker.io's client, the engine's version (not another client on PATH)
SOCKET = Path("/run/appliance-tests-docker.sock")
DATA_ROOT = Path("/var/lib/appliance-tests-docker")
EXEC_ROOT = Path("/run/appliance-tests-docker")
LOG = Path("/var/log/appliance-tests-dockerd.log")
# dockerd outlives the session, so its Popen is never waited for: held here, it is not collected mid-test with a
# "subprocess is still running" ResourceWarning (which pytest turns into a failure of whichever test is running).
_daemons: list[subprocess.Popen[bytes]] = []


class DockerError(RuntimeError):
    pass


class Docker:
    """The tests' engine: ``docker`` commands against its socket."""

    def __init__(self, host: HostNetwork) -> None:
        self.host = host

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(DOCKER), "-H", f"unix://{SOCKET}", *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise DockerError(f"docker {' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done

    def running(self) -> bool:
        return SOCKET.exists() and self("version", "--format", "{{.Server.Version}}", check=False).returncode == 0

    def start(self, timeout: float = 60) -> Docker:
        """Start dockerd unless it runs; it outlives the session (its image cache is the point)."""
        if self.running():
            return self
        for path in (DATA_ROOT, EXEC_ROOT):
            path.mkdir(parents=True, exist_ok=True)
        argv = [
            str(DOCKERD),
            "--host", f"unix://{SOCKET}",
            "--data-root", str(DATA_ROOT),
            "--exec-root", str(EXEC_ROOT),
            "--pidfile", str(EXEC_ROOT / "dockerd.pid"),
            # No docker0 bridge and no NAT rules: a container has loopback, or the host's network for a build.
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
        ]  # fmt: skip
        with LOG.open("ab") as log:
            _daemons.append(
                subprocess.Popen(
                    self.host.wrap(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=self.host.pass_fds,
                    start_new_session=True,
                )
            )
        wait_until(self.running, timeout, f"dockerd to answer on {SOCKET} (its log: {LOG})", interval=0.2)
        return self

    def has_image(self, tag: str) -> bool:
        return self("image", "inspect", tag, check=False).returncode == 0

    def imported(self, tarball: Path) -> str:
        """The debootstrap root as an image (``docker import``), made once per tarball."""
        tag = f"appliance-test-base:{tarball.stem}"
        if not self.has_image(tag):
            self("import", str(tarball), tag, timeout=600)
        return tag

    def built(self, name: str, dockerfile: str, context: Path, inputs: Sequence[Path] = ()) -> str:
        """``docker build --network host`` of ``dockerfile`` in ``context``, tagged by the hash of the Dockerfile and
        ``inputs`` (files in the context whose change must rebuild it)."""
        digest = hashlib.sha256(dockerfile.encode())
        for path in inputs:
            digest.update(path.read_bytes())
        tag = f"appliance-test-{name}:{digest.hexdigest()[:16]}"
        if not self.has_image(tag):
            (context / "Dockerfile").write_text(dockerfile)
            self("build", "--network", "host", "--tag", tag, str(context), timeout=1800)
        return tag

    def pid(self, container: str) -> int:
        return int(self("inspect", "--format", "{{.State.Pid}}", container).stdout.strip())

    def give_loopback_client_address(self, container: str) -> None:
        """A veth pair inside the container's (``--network none``) namespace, one end carrying only 127.0.0.2/32:
        libwebrtc ignores ``lo``, so without it a client in there has no candidate; with it, every one is 127.x."""
        ip = shutil.which("ip") or "/usr/sbin/ip"
        enter = ["nsenter", f"--net=/proc/{self.pid(container)}/ns/net", ip]
        for args in PrivateNetwork.client_interface():
            subprocess.run([*enter, *args], check=True, stdin=subprocess.DEVNULL, capture_output=True)


# The base the appliance's images are built on here: debootstrap's Debian 12 with this network's certificate
# authorities (it may inspect TLS), as a Debian VM of this network has them; what a user passes as BASE_IMAGE.
SITE_BASE = """\
FROM {base}
COPY local-cas/ /usr/local/share/ca-certificates/
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
    ca-certificates >/dev/null && update-ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
"""


def sdk() -> docker.DockerClient:
    """The docker Python SDK on the tests' engine."""
    return docker.DockerClient(base_url=f"unix://{SOCKET}", timeout=1800)


def site_base(engine: Docker, host: HostNetwork) -> str:
    base = engine.imported(pristine_tarball(host))
    with tempfile.TemporaryDirectory(prefix="appliance-site-base-") as tmp:
        cas = Path(tmp) / "local-cas"
        cas.mkdir()
        for ca in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")):
            shutil.copyfile(ca, cas / ca.name)
        return engine.built("site-base", SITE_BASE.format(base=base), Path(tmp), sorted(cas.iterdir()))


def appliance_image(engine: Docker, host: HostNetwork, target: str) -> str:
    """deploy/docker/Dockerfile's ``target`` built from this work tree as a user builds it (the context its root,
    build/livekit-server and build/livekit-client.tgz in it), on the site base; the engine's layer cache makes an
    unchanged rebuild quick."""
    base = site_base(engine, host)
    tag = f"appliance-test-{target}:latest"
    with tempfile.TemporaryDirectory(prefix="appliance-context-") as tmp:
        context = copy_work_tree(Path(tmp) / "context")
        (context / "build").mkdir(exist_ok=True)
        shutil.copy2(livekit.binary(), context / "build" / "livekit-server")
        shutil.copy2(LIVEKIT_CLIENT_TGZ, context / "build" / "livekit-client.tgz")
        sdk().images.build(
            path=str(context),
            dockerfile="deploy/docker/Dockerfile",
            target=target,
            buildargs={"BASE_IMAGE": base},
            network_mode="host",
            tag=tag,
            rm=True,
        )
    return tag
