"""Blocking connections to the appliance's Redis and PostgreSQL for the control plane (status, doctor, install,
forget, backup, restore): a server that cannot be reached is one line naming it and the fix, never the password."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.retry import Retry

from agent.store.redis_tier import connection_kwargs
from appliance.errors import ApplianceError
from appliance.masking import mask

if TYPE_CHECKING:
    import psycopg

    from agent.settings import PostgresSettings, RedisSettings

T = TypeVar("T")
# Commands here scan and copy whole keys: allow them longer than the data plane's 0.5 s.
COMMAND_TIMEOUT_S = 10.0


def redis_client(settings: RedisSettings, timeout_s: float = COMMAND_TIMEOUT_S, *, retry: bool = True) -> redis.Redis:
    """A blocking client as the control plane's ACL user on a Redis that has the appliance's users (the settings
    name one: the box's own Redis), else as the settings' user. An operator's command rides out a dropped
    connection with redis-py's retries; a probe (``retry=False``) answers within its timeout instead."""
    if settings.acl_user is not None:
        settings = settings.model_copy(update={"acl_user": "cli"})
    kwargs = connection_kwargs(settings, timeout_s)
    return redis.Redis(**kwargs) if retry else redis.Redis(**kwargs, retry=Retry(NoBackoff(), 0))


def redis_address(settings: RedisSettings) -> str:
    return str(settings.unix_socket) if settings.unix_socket is not None else f"{settings.host}:{settings.port}"


def on_redis(settings: RedisSettings, op: Callable[[], T]) -> T:
    """Run ``op``; a Redis failure becomes an ApplianceError naming the server (redis-py never echoes passwords)."""
    try:
        return op()
    except AuthenticationError:
        raise ApplianceError(
            f"Redis at {redis_address(settings)} refused the password: check the redis.password secret"
        ) from None
    except (RedisError, OSError) as exc:
        raise ApplianceError(
            f"cannot use Redis at {redis_address(settings)} ({exc}): is Redis running?"
            " check redis.host, redis.port and redis.unix_socket"
        ) from None


def connect_postgres(pg: PostgresSettings, *, timeout_s: float | None = None) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection; psycopg's error as it comes. ``timeout_s`` bounds the connection (libpq's floor
    is 2 s) and each statement."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    conninfo = pg.conninfo()
    if timeout_s is not None:
        conninfo = make_conninfo(
            conninfo, connect_timeout=max(2, round(timeout_s)), options=f"-c statement_timeout={timeout_s * 1000:.0f}"
        )
    # The password goes as its own argument: conninfo() is safe to log, and stays so.
    password = None if pg.password is None else pg.password.get_secret_value()
    return psycopg.connect(conninfo, password=password, autocommit=True)


def postgres_connection(pg: PostgresSettings) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection, or an ApplianceError naming the server and the fix, never the password."""
    import psycopg

    try:
        return connect_postgres(pg)
    except psycopg.OperationalError as exc:
        reason = postgres_reason(exc, None if pg.password is None else pg.password.get_secret_value())
        if "password" in reason or "authentication" in reason:
            fix = "check postgres.user and the postgres.password secret"
        else:
            fix = "is PostgreSQL running? check postgres.host and postgres.port"
        raise ApplianceError(f"cannot connect to PostgreSQL at {pg.host}:{pg.port} ({reason}): {fix}") from None


def postgres_reason(exc: BaseException, password: str | None = None) -> str:
    """libpq's own reason, without its preamble: 'connection to server at ... failed: Connection refused'."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    failed = [line for line in lines if "failed:" in line]
    reason = (failed or lines)[-1].rsplit("failed:", 1)[-1].strip().removeprefix("FATAL:").strip()
    reason = reason or type(exc).__name__
    # libpq does not echo passwords; this guards against a future message that does.
    return mask(reason, [password])


def apply_migrations(pg: PostgresSettings) -> list[str]:
    """Names of the migrations applied now (empty when the schema was up to date)."""
    from agent.store.migrate import migrate

    with postgres_connection(pg) as conn:
        return migrate(conn)
