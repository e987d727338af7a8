"""The stores elsewhere, over TLS: a room's store and the operator's probes reach a real Redis on its TLS-only port
and a real PostgreSQL with sslmode verify-full, both with certificates of the test's own CA, by host name; a
certificate from another CA is refused by both."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from agent.settings import AgentSettings, StoreSettings
from agent.store.migrate import migrate
from agent.store.store import ConversationStore
from appliance.probes import probe_postgres
from appliance.settings import ApplianceSettings
from appliance.stores import connect_postgres, redis_client
from harness.servers import PostgresServer, RedisServer
from harness.tls import TestCA


@pytest.fixture(scope="module")
def ca() -> Iterator[TestCA]:
    made = TestCA()
    yield made
    made.close()


@pytest.fixture(scope="module")
def tls_redis(ca: TestCA) -> Iterator[RedisServer]:
    server = RedisServer(tls=ca).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_pg(ca: TestCA) -> Iterator[PostgresServer]:
    server = PostgresServer(tls=ca).start()
    yield server
    server.close()


def database(pg: PostgresServer) -> str:
    name = f"tls_{uuid.uuid4().hex[:12]}"
    pg.create_database(name)
    with pg.connect(name) as conn:
        migrate(conn)
    return name


async def test_a_rooms_store_over_verified_tls(tls_redis: RedisServer, tls_pg: PostgresServer, tmp_path: Path) -> None:
    settings = AgentSettings(
        redis=tls_redis.tls_settings(),
        postgres=tls_pg.tls_settings(database(tls_pg)),
        store=StoreSettings(key_prefix=f"tls{uuid.uuid4().hex[:8]}:", spool_dir=tmp_path / "spool"),
    )
    async with ConversationStore(settings) as store:
        conversation = await store.open("tls-room")
        await conversation.append("user", "ann", "over TLS")
        assert store.stats.appends_redis == 1  # the TLS-only port took it: no fallback
        await conversation.close("ended")
    with connect_postgres(settings.postgres) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        ended = conn.execute("SELECT status FROM conversations WHERE room = 'tls-room'").fetchone()
    assert row is not None and row[0] is True and str(row[1]).startswith("TLS"), row
    assert ended == ("ended",)  # the lifecycle went to PostgreSQL directly, over TLS
    assert redis_client(settings.redis).ping()
    probed = probe_postgres(ApplianceSettings(redis=settings.redis, postgres=settings.postgres))
    assert probed.ok, probed


def test_a_certificate_of_another_ca_is_refused(tls_redis: RedisServer, tls_pg: PostgresServer) -> None:
    other = TestCA("another CA")
    try:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            redis_client(tls_redis.tls_settings(ca_file=other.ca_file), retry=False).ping()
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            connect_postgres(tls_pg.tls_settings(ca_file=other.ca_file)).close()
    finally:
        other.close()
