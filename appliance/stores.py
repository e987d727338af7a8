"""Blocking connections to the appliance's Redis and PostgreSQL for the operator's commands (forget, backup,
restore): a server that cannot be reached is one line naming it and the fix, never the password."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import redis
from redis.exceptions import AuthenticationError, RedisError

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    import psycopg

    from agent.settings import PostgresSettings, RedisSettings

T = TypeVar("T")


def redis_client(settings: RedisSettings) -> redis.Redis:
    password = settings.password.get_secret_value() if settings.password else None
    # Commands here scan and copy whole keys: allow them longer than the data plane's 0.5 s.
    timeout = max(settings.timeout_s, 10.0)
    if settings.unix_socket is not None:
        return redis.Redis(
            unix_socket_path=str(settings.unix_socket),
            db=settings.db,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


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


def postgres_connection(settings: PostgresSettings) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection, or an ApplianceError naming the server and the fix."""
    from appliance.cli.db import connect

    return connect(settings)
