"""deploy/compose.yaml run by docker-compose on the tests' engine: the appliance and a worker from the worker image
on its stores and LiveKit. The worker container serves a room alone, drains it on ``docker stop`` and exits 0;
after ``docker kill`` of it, the appliance's own worker takes its room over with the whole conversation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from harness.checkout import CHECKOUT
from harness.docker import SOCKET, Docker
from harness.servers import wait_until
from tests.containers.conftest import TEST_ENV, Box

pytestmark = pytest.mark.timeout(1800)

COMPOSE = CHECKOUT / "deploy" / "compose.yaml"
SUPERVISORCTL = "supervisorctl -c /var/lib/appliance/etc/supervisord.conf"
# What the test changes of deploy/compose.yaml: no host network (the appliance gets --network none and the
# loopback veth; the worker shares it as the file says), the test settings.
OVERRIDE = {
    "services": {
        "appliance": {"network_mode": "none", "environment": TEST_ENV, "stop_grace_period": "120s"},
        "worker": {"environment": {"APPLIANCE_WORKER__DRAIN_TIMEOUT_S": "10"}, "stop_grace_period": "120s"},
    }
}


class Compose:
    def __init__(self, project: str, override: Path, images: dict[str, str]) -> None:
        self.project = project
        self.override = override
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", **images}

    def __call__(self, *args: str, timeout: float = 600) -> str:
        argv = ["docker-compose", "-p", self.project, "-f", str(COMPOSE), "-f", str(self.override), *args]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"docker-compose {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def compose(
    engine: Docker,
    client: docker.DockerClient,
    appliance_tag: str,
    worker_tag: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Compose, Box, Box]]:
    override = tmp_path_factory.mktemp("compose") / "override.yaml"
    override.write_text(json.dumps(OVERRIDE))  # JSON is YAML
    project = f"appliancetest{uuid.uuid4().hex[:8]}"
    up = Compose(project, override, {"APPLIANCE_IMAGE": appliance_tag, "APPLIANCE_WORKER_IMAGE": worker_tag})
    try:
        up("up", "-d", timeout=900)  # the worker starts once the appliance is healthy
        found = {c.labels["com.docker.compose.service"]: c for c in client.containers.list(
            filters={"label": f"com.docker.compose.project={project}"})}  # fmt: skip
        appliance, worker = Box(engine, found["appliance"]), Box(engine, found["worker"])
        engine.give_loopback_client_address(appliance.name)
        worker.wait_healthy()
        yield up, appliance, worker
    finally:
        up("down", "--volumes", "--timeout", "120", timeout=900)


def wait_for_line(box: Box, path: str, pattern: str, timeout: float) -> float:
    began = time.monotonic()
    wait_until(lambda: re.search(pattern, box.sh(f"cat {path}")) is not None, timeout, f"{pattern!r} in {path}")
    return time.monotonic() - began


def held(text: str) -> int:
    counts = re.findall(r"holds (\d+) messages", text)
    assert counts, text
    return int(counts[-1])


def test_no_network_was_made_and_both_workers_are_registered(
    client: docker.DockerClient, compose: tuple[Compose, Box, Box]
) -> None:
    up, appliance, worker = compose
    made = client.networks.list(filters={"label": f"com.docker.compose.project={up.project}"})
    assert not made, [n.name for n in made]
    assert worker.container.attrs["HostConfig"]["NetworkMode"] == f"container:{appliance.container.id}"
    status = json.loads(appliance.sh("appliance status --json", check=False))
    assert status["state"] == "healthy", status
    assert "registered worker" in worker.logs()  # with the appliance's LiveKit
    assert worker.sh("id -u", user="").strip() == "10001"  # the image's user, not root


def test_the_worker_image_serves_drains_and_is_taken_over(compose: tuple[Compose, Box, Box]) -> None:
    _, appliance, worker = compose
    appliance.sh(f"{SUPERVISORCTL} stop worker")  # the worker container is now the only one LiveKit has
    stay = "(printf '{}\\n'; sleep 900) | appliance chat compose-room --identity frank >{} 2>&1"
    appliance.container.exec_run(["bash", "-c", stay.format("first line", "/tmp/frank.out")], detach=True)
    wait_for_line(appliance, "/tmp/frank.out", r"holds 2 messages", 60)
    assert "received job request" in worker.logs()  # it took the job: no other worker runs
    # Its own Prometheus endpoint counts it (what a Kubernetes autoscaler scales on: deploy/helm).
    scraped = appliance.sh("python -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:9465/metrics')"
                           ".read().decode())\"")  # fmt: skip
    assert re.search(r"^lk_agents_active_job_count\{[^}]*\} 1\.0$", scraped, flags=re.MULTILINE), scraped

    # docker stop: the worker container drains (frank stays, so until its drain timeout) and exits 0.
    code, took = worker.stop()
    print(f"docker stop of the worker container, a room draining: {took:.1f} s, exit {code}")
    assert code == 0, worker.logs()[-3000:]
    assert "drain" in worker.logs().lower()
    assert "aiohttp.access" not in worker.logs()  # health checks every 10 s, not a line each

    # Back, then killed: the appliance's worker takes compose-room over with its whole conversation.
    appliance.sh("pkill -f '[a]ppliance chat compose-room' || true")
    worker.container.start()
    worker.wait_healthy()
    appliance.container.exec_run(["bash", "-c", stay.format("second line", "/tmp/frank2.out")], detach=True)
    wait_for_line(appliance, "/tmp/frank2.out", r"I'm back(?s:.*)holds \d+ messages", 60)
    before = held(appliance.sh("cat /tmp/frank2.out"))
    appliance.sh(f"{SUPERVISORCTL} start worker")
    worker.container.kill()
    took = wait_for_line(appliance, "/tmp/frank2.out", r"I'm back(?s:.*)I'm back", 60)
    print(f"docker kill of the worker container: its room back in {took:.1f} s")
    lines = appliance.chat("compose-room", "grace", "who was here?")
    # Every message kept: the taking-over agent's greeting, grace's line and its answer on top.
    assert held("\n".join(lines)) == before + 3, lines
    appliance.sh("pkill -f '[a]ppliance chat compose-room' || true")
