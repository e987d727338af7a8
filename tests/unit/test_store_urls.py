"""A worker box's shared stores as an operator gives them (`install --redis-url`, `--postgres-dsn`): turned into
settings, and refused, one line naming the option, when they hold a password or what the appliance cannot use."""

from __future__ import annotations

import pytest

from agent.settings import PostgresSettings, RedisSettings
from appliance.store_urls import postgres_settings, redis_settings


def test_a_redis_url_becomes_redis_settings() -> None:
    assert redis_settings("rediss://appliance@redis.internal:6380/2") == {
        "host": "redis.internal", "port": 6380, "db": 2, "tls": True, "username": "appliance"}  # fmt: skip
    plain = redis_settings("redis://10.0.0.5")
    assert plain == {"host": "10.0.0.5", "port": 6379, "db": 0, "tls": False}
    RedisSettings(**plain)  # the settings accept what the URL gave


def test_a_dsn_becomes_postgres_settings() -> None:
    given = postgres_settings("postgresql://app@pg.internal:5433/conversations?sslmode=verify-full&sslrootcert=/ca")
    assert given == {"host": "pg.internal", "port": 5433, "dbname": "conversations", "user": "app",
                     "sslmode": "verify-full", "sslrootcert": "/ca"}  # fmt: skip
    assert PostgresSettings(**given).conninfo().count("sslmode=verify-full") == 1
    assert postgres_settings("host=pg.internal dbname=x")["dbname"] == "x"


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("rediss://app:hunter2@redis.internal", "--redis-url holds a password: give it with --redis-password-file"),
        ("rediss://:hunter2@redis.internal", "--redis-url holds a password"),
        ("http://redis.internal", "--redis-url: use redis:// or rediss:// (TLS), not http"),
        ("redis://redis.internal/cache", "--redis-url 'redis://redis.internal/cache': the path is the database"),
        ("redis://redis.internal:99999", "--redis-url 'redis://redis.internal:99999': Port out of range"),
        (
            "rediss://redis.internal/?ssl_ca_certs=/x",
            "--redis-url 'rediss://redis.internal/?ssl_ca_certs=/x': no query",
        ),
        ("rediss://app:hunter2@redis.internal:99999", "--redis-url holds a password"),
    ],
)
def test_a_redis_url_the_appliance_cannot_use_is_refused(url: str, error: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        redis_settings(url)
    assert str(excinfo.value).startswith(error) and "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("dsn", "error"),
    [
        ("postgresql://app:hunter2@pg.internal/x", "--postgres-dsn holds a password: give it with"),
        ("host=pg.internal password=hunter2", "--postgres-dsn holds a password"),
        ("host=pg.internal passfile=/root/.pgpass", "--postgres-dsn: passfile not supported"),
        ("dbname=x", "--postgres-dsn: no host"),
        ("host=pg.internal port", "--postgres-dsn: not a libpq connection string"),
    ],
)
def test_a_dsn_the_appliance_cannot_use_is_refused(dsn: str, error: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        postgres_settings(dsn)
    assert str(excinfo.value).startswith(error) and "hunter2" not in str(excinfo.value)
