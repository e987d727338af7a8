"""A worker box (`install --role worker`) on shared stores elsewhere, reached over verified TLS: a Redis on its
TLS-only port and a PostgreSQL with sslmode verify-full, with certificates of the test's own CA and passwords from
files; its LiveKit is the running appliance's. It runs only its own programs, `appliance status` shows the remote
stores healthy, and a conversation it serves lands in the shared PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.programs import WORKERS
from harness.appliance import InstalledAppliance
from harness.servers import PostgresServer, RedisServer, wait_until
from harness.tls import TestCA
from tests.system.test_status import status


@pytest.fixture
def shared_stores() -> Iterator[tuple[TestCA, RedisServer, PostgresServer]]:
    ca = TestCA()
    redis, pg = RedisServer(tls=ca), PostgresServer(tls=ca)
    try:
        redis.start()
        pg.start()
        pg.create_database("shared")
        yield ca, redis, pg
    finally:
        redis.close()
        pg.close()
        ca.close()


@contextmanager
def workers_stopped(appliance: InstalledAppliance) -> Iterator[None]:
    """The running appliance without its worker (whichever of the two a graceful restart left running), so LiveKit
    has only the other boxes' workers to give rooms to; started again after."""
    supervisor = appliance.supervisor()
    running = [p.name for p in supervisor.processes() if p.name in WORKERS and p.running]
    for name in running:
        assert supervisor.stop(name, timeout_s=120)
    try:
        yield
    finally:
        for name in running:
            supervisor.start(name)


def secret_file(directory: Path, name: str, secret: str) -> Path:
    path = directory / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def test_a_worker_box_on_shared_stores_over_tls(
    appliance: InstalledAppliance,
    new_appliance: Callable[..., InstalledAppliance],
    shared_stores: tuple[TestCA, RedisServer, PostgresServer],
    tmp_path: Path,
) -> None:
    ca, redis, pg = shared_stores
    main = appliance.settings
    assert main.livekit.api_key is not None and main.livekit.api_secret is not None
    box = new_appliance()
    box.run(
        "install", "--yes", "--role", "worker",
        "--redis-url", f"rediss://localhost:{redis.tls_port}/0",
        "--redis-password-file", str(secret_file(tmp_path, "redis", redis.password)),
        "--redis-ca-file", str(ca.ca_file),
        "--postgres-dsn", f"host=localhost port={pg.port} dbname=shared user=appliance sslmode=verify-full"
                          f" sslrootcert={ca.ca_file}",
        "--postgres-password-file", str(secret_file(tmp_path, "postgres", pg.password)),
        "--livekit-url", main.livekit.url,
        "--livekit-api-key", main.livekit.api_key.get_secret_value(),
        "--livekit-api-secret-file", str(secret_file(tmp_path, "livekit", main.livekit.api_secret.get_secret_value())),
        timeout=400,
    )  # fmt: skip
    settings = box.settings
    assert settings.redis.tls and settings.postgres.sslmode == "verify-full" and settings.control.role == "worker"
    secrets_text = (box.etc / "secrets.toml").read_text()
    assert redis.password in secrets_text and redis.password not in box.config_file.read_text()

    code, report = status(box)
    assert code == 0, report["problems"]
    assert {p["name"] for p in report["programs"]} == {
        "events",
        "metrics",
        "prometheus",
        "flusher",
        "worker",
        "worker-alt",
    }
    assert report["redis"]["ok"] and report["postgres"]["ok"] and report["flusher"]["ok"], report
    assert [w["registered"] for w in report["workers"]] == [True]
    assert report["livekit"]["ok"] and report["livekit"]["url"] == main.livekit.url, report["livekit"]
    assert f"livekit:  up at {main.livekit.url}" in box.run("status").stdout

    with workers_stopped(appliance):  # LiveKit has only the box's worker to give the room to
        script = tmp_path / "chat.txt"
        script.write_text("hello over TLS\n")
        said = box.run("chat", "tls-room", "--identity", "carol", "--script", str(script), timeout=180).stdout
        assert "carol: hello over TLS" in said, said

    def stored() -> list[str]:
        with pg.connect("shared") as conn:
            rows = conn.execute(
                "SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE c.room = 'tls-room' ORDER BY m.id"
            ).fetchall()
        return [str(r[0]) for r in rows]

    wait_until(lambda: "hello over TLS" in stored(), 30, "the line flushed into the shared PostgreSQL")
    shown = json.dumps(report)
    assert redis.password not in shown and pg.password not in shown
