"""The appliance's images (deploy/docker/Dockerfile) built and run on the tests' own Docker engine (harness.docker),
driven with the docker Python SDK.

Network: the engine has no bridge and no NAT; builds download with ``--network host``; a container runs with
``--network none`` plus a veth carrying only 127.0.0.2/32 (harness.docker), or shares such a container's namespace.
"""

from __future__ import annotations

import contextlib
import shlex
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from harness.chroot import HostNetwork
from harness.docker import Docker, appliance_image, sdk
from harness.livekit import PrivateNetwork
from harness.servers import wait_until

# What the tests change of the image's defaults, as an operator would (APPLIANCE_<SECTION>__<KEY>): the bundled
# LiveKit on loopback with ICE on loopback and every candidate logged; a short drain (the drain is what is
# tested, not its length).
TEST_ENV = {
    "APPLIANCE_LIVEKIT_SERVER__LOOPBACK_ONLY": "true",
    "APPLIANCE_LIVEKIT_SERVER__LOG_LEVEL": "debug",
    "APPLIANCE_WORKER__DRAIN_TIMEOUT_S": "10",
}
# Above the drain and the other programs' stops (supervisord stops them one after another).
STOP_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def engine(private_network: PrivateNetwork | None) -> Docker:
    if private_network is None:
        pytest.skip("the tests' Docker engine needs root")
    return Docker(HostNetwork(private_network.host_namespace)).start()


@pytest.fixture(scope="session")
def client(engine: Docker) -> docker.DockerClient:
    return sdk()


@pytest.fixture(scope="session")
def appliance_tag(engine: Docker) -> str:
    return appliance_image(engine, engine.host, "appliance")


@pytest.fixture(scope="session")
def worker_tag(engine: Docker) -> str:
    return appliance_image(engine, engine.host, "worker")


class Box:
    """A running container of the tests' engine: commands in it as root, its health, its logs."""

    def __init__(self, engine: Docker, container: Container) -> None:
        self.engine = engine
        self.container = container

    @property
    def name(self) -> str:
        return str(self.container.name)

    def sh(self, command: str, *, check: bool = True, user: str = "root") -> str:
        code, output = self.container.exec_run(["bash", "-c", command], user=user)
        assert isinstance(output, bytes)  # not streamed
        text = output.decode(errors="replace")
        if check and code != 0:
            raise AssertionError(f"{command!r} in {self.name} exited {code}:\n{text[-3000:]}")
        return text

    def state(self) -> dict[str, Any]:
        self.container.reload()
        return dict(self.container.attrs["State"])

    def wait_healthy(self, timeout: float = 240) -> None:
        def healthy() -> bool:
            state = self.state()
            assert state["Running"], f"{self.name} exited {state['ExitCode']}:\n{self.logs()[-3000:]}"
            return bool(state.get("Health", {}).get("Status") == "healthy")

        wait_until(healthy, timeout, f"{self.name}'s health check to pass")

    def logs(self) -> str:
        return bytes(self.container.logs()).decode(errors="replace")

    def chat(self, room: str, identity: str, *lines: str) -> list[str]:
        script = "".join(f"{line}\n" for line in lines)
        out = self.sh(
            f"printf %s {shlex.quote(script)} >/tmp/chat-{identity}.txt && "
            f"appliance chat {room} --identity {identity} --script /tmp/chat-{identity}.txt 2>/tmp/chat.err"
            " || { cat /tmp/chat.err; exit 1; }"
        )
        return out.splitlines()

    def stop(self, timeout: int = STOP_TIMEOUT_S) -> tuple[int, float]:
        """``docker stop``: its exit code and how long it took."""
        began = time.monotonic()
        self.container.stop(timeout=timeout)
        took = time.monotonic() - began
        return int(self.state()["ExitCode"]), took

    def start(self) -> None:
        self.container.start()
        self.engine.give_loopback_client_address(self.name)


def run_box(engine: Docker, client: docker.DockerClient, image: str, **options: Any) -> Box:
    """``docker run`` with no network but the loopback veth (or another container's namespace)."""
    network = options.pop("network_mode", "none")
    container = client.containers.run(
        image,
        detach=True,
        name=f"appliance-test-{uuid.uuid4().hex[:8]}",
        network_mode=network,
        stop_signal="SIGTERM",
        **options,
    )
    box = Box(engine, container)
    if network == "none":
        engine.give_loopback_client_address(box.name)
    return box


@contextlib.contextmanager
def volume(client: docker.DockerClient) -> Iterator[str]:
    made = client.volumes.create(f"appliance-test-{uuid.uuid4().hex[:8]}")
    try:
        yield str(made.name)
    finally:
        made.remove(force=True)
