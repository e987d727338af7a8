"""The whole appliance in one container (deploy/docker/Dockerfile, target ``appliance``) on a real Docker engine:
healthy by its own HEALTHCHECK, a chat round trip, ``docker stop`` drains a room in conversation and exits 0,
``docker start`` resumes it with every message, a new container on the same volume carries on, and no secret is
in the image."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from harness.docker import Docker
from harness.livekit import candidates_in, is_loopback
from harness.servers import wait_until
from tests.containers.conftest import STOP_TIMEOUT_S, TEST_ENV, Box, run_box, volume

pytestmark = pytest.mark.timeout(1800)

DATA = "/var/lib/appliance"
SQL = (
    "python -c 'import sys; from appliance.settings import load; from appliance.stores import postgres_connection; "
    "print(postgres_connection(load().postgres).execute(sys.argv[1]).fetchall())' "
)


@pytest.fixture(scope="module")
def data_volume(client: docker.DockerClient) -> Iterator[str]:
    with volume(client) as name:
        yield name


@pytest.fixture(scope="module")
def box(engine: Docker, client: docker.DockerClient, appliance_tag: str, data_volume: str) -> Iterator[Box]:
    started = run_box(engine, client, appliance_tag, environment=TEST_ENV, volumes={data_volume: {"bind": DATA}})
    try:
        started.wait_healthy()
        yield started
    finally:
        with contextlib.suppress(docker.errors.NotFound):  # replaced by a test
            started.container.remove(force=True)


def held(lines: list[str]) -> int:
    found = re.search(r"holds (\d+) messages", lines[-1])
    assert found, lines
    return int(found.group(1))


def test_healthy_with_supervisord_under_tini_and_no_program_as_root(box: Box) -> None:
    assert box.sh("tr '\\0' ' ' </proc/1/cmdline").startswith("/usr/bin/tini -- appliance run")
    processes = [line.split(None, 3) for line in box.sh("ps -eo pid=,ppid=,uid=,args=").splitlines()]
    supervisord = [p for p in processes if "supervisord -n" in p[3]]
    assert len(supervisord) == 1 and supervisord[0][1] == "1", processes  # the init's child
    as_root = [p for p in processes if p[2] == "0" and p[0] != "1" and not p[3].startswith(("ps ", "bash -c"))]
    assert not as_root, as_root
    status = box.sh("appliance status", check=False)
    assert "healthy" in status, status
    # Config, secrets and data live on the volume, the secrets readable by the service user only.
    assert box.sh(f"stat -c '%a %U' {DATA}/etc/secrets.toml").split() == ["600", "appliance"]
    assert box.sh(f"test -f {DATA}/postgres/PG_VERSION && test -d {DATA}/redis && echo ok").strip() == "ok"


def test_a_chat_round_trip_on_loopback(box: Box) -> None:
    lines = box.chat("image-room", "alice", "hello there")
    assert lines[0].startswith("agent: Hello!"), lines
    assert lines[1:3] == [
        "alice: hello there",
        "agent: [offline model] I have heard alice. This conversation holds 2 messages. Last: alice: hello there",
    ]
    signalled = candidates_in(box.sh("cat /var/log/appliance/livekit.log"))
    assert signalled and all(is_loopback(address) for address, _, _ in signalled), signalled


def test_the_console_serves_its_page_and_livekit_client_from_the_image(box: Box) -> None:
    """The image carries livekit-client's bundle (nothing is downloaded when a container starts): the console
    runs, serves its page and the bundle, and makes links with the secret the container made."""
    report = json.loads(box.sh("appliance status --json", check=False))
    assert {p["name"]: p["state"] for p in report["programs"]}.get("console") == "RUNNING", report["programs"]
    get = (
        "python -c 'import sys, urllib.request; r = urllib.request.urlopen(sys.argv[1], timeout=10); "
        "print(r.status, len(r.read()))' "
    )
    assert box.sh(get + "http://127.0.0.1:8090/").split()[0] == "200"
    status, size = box.sh(get + "http://127.0.0.1:8090/static/livekit-client.umd.js").split()
    assert status == "200" and int(size) > 100_000, (status, size)
    said = box.sh("appliance console link image-room --identity visitor 2>/dev/null").strip()
    assert said.startswith("http://127.0.0.1:8090/l/") and "\n" not in said, said
    link = said
    assert box.sh(get + shlex.quote(link)).split()[0] == "200"


def test_docker_stop_drains_a_room_in_conversation_and_start_resumes_it(box: Box) -> None:
    # A participant who stays: one line, then silence with the connection open.
    box.container.exec_run(
        ["bash", "-c", "(printf 'before the stop\\n'; sleep 600) | appliance chat drain-room --identity dave "
         ">/tmp/drain.out 2>&1"],
        detach=True,
    )  # fmt: skip
    wait_until(lambda: "holds 2 messages" in box.sh("cat /tmp/drain.out"), 60, "dave's answer")
    code, took = box.stop()
    print(f"docker stop with a room draining: {took:.1f} s, exit {code}")
    assert code == 0, box.logs()[-3000:]
    assert took < STOP_TIMEOUT_S - 10  # supervisord finished on its own, docker did not have to KILL it
    assert re.search(r"stopped: worker \(exit status 0\)", box.logs()), box.logs()[-3000:]
    box.start()
    box.wait_healthy()
    assert "drain" in box.sh("cat /var/log/appliance/worker.log*").lower()
    assert "interrupted" in box.sh(SQL + "\"SELECT status FROM conversations WHERE room = 'drain-room'\"")
    lines = box.chat("drain-room", "dave", "after the start")
    assert lines[0] == "agent: I'm back, and I remember our conversation.", lines
    assert held(lines) >= 4, lines  # greeting, dave's line and its answer, the resume greeting, the new line


def test_a_new_container_on_the_same_volume_carries_on(
    box: Box, engine: Docker, client: docker.DockerClient, appliance_tag: str, data_volume: str
) -> None:
    secrets_before = box.sh(f"cat {DATA}/etc/secrets.toml")
    before = held(box.chat("drain-room", "erin", "still here?"))
    box.stop()
    box.container.remove()
    replaced = run_box(engine, client, appliance_tag, environment=TEST_ENV, volumes={data_volume: {"bind": DATA}})
    try:
        replaced.wait_healthy()
        assert replaced.sh(f"cat {DATA}/etc/secrets.toml") == secrets_before  # made once, on the volume
        lines = replaced.chat("drain-room", "erin", "and now?")
        assert lines[0] == "agent: I'm back, and I remember our conversation.", lines
        assert held(lines) == before + 3, lines  # every message kept: the resume greeting, the line, the answer
    finally:
        replaced.container.remove(force=True)


def test_no_secret_is_in_either_image(
    client: docker.DockerClient, appliance_tag: str, worker_tag: str, data_volume: str
) -> None:
    """``docker save`` of both images holds none of the secrets a container made, nor a secrets file."""
    reader = client.containers.run(
        appliance_tag, entrypoint=["cat", f"{DATA}/etc/secrets.toml"], volumes={data_volume: {"bind": DATA}},
        network_mode="none", remove=True,
    )  # fmt: skip
    secrets = tomllib.loads(bytes(reader).decode())
    values = [v.encode() for table in secrets.values() for v in table.values() if isinstance(v, str) and len(v) >= 8]
    assert len(values) >= 4, secrets.keys()  # Redis, PostgreSQL, LiveKit key and secret
    for tag in (appliance_tag, worker_tag):
        with tempfile.TemporaryDirectory(prefix="appliance-save-") as tmp:
            saved = Path(tmp) / "image.tar"
            with saved.open("wb") as out:
                for chunk in client.images.get(tag).save():
                    out.write(chunk)
            found = list(_files_in_layers(saved))
            assert len(found) > 1000, tag  # the layers were read
            names = [name for name, _ in found if name.endswith("secrets.toml")]
            assert not names, (tag, names)
            leaked = [name for name, data in found if any(v in data for v in values)]
            assert not leaked, (tag, leaked)


def _files_in_layers(image_tar: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(image_tar) as image:
        for member in image.getmembers():
            if not member.isfile():
                continue
            data = image.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for file in layer.getmembers():
                        if file.isfile():
                            yield file.name, layer.extractfile(file).read()  # type: ignore[union-attr]
            else:
                yield member.name, data  # the image's config (its environment, labels, history)
