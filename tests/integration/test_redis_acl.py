"""The worker's, the flusher's and the command line's Redis users (agent/store/acl.py) on a real Redis: what each
may not do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from agent.store import acl
from agent.store.redis_tier import make_client
from harness.servers import RedisServer

PREFIX = "appl:"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    server.allow_prefix(PREFIX)
    server.client().set("other:secret", "another appliance's")
    yield server
    server.close()


@pytest.mark.parametrize("user", ["worker", "flusher", "cli"])
async def test_a_program_cannot_flush_reconfigure_or_read_another_prefix(server: RedisServer, user: str) -> None:
    client: aioredis.Redis = make_client(server.settings(acl_user=user))  # type: ignore[arg-type]
    try:
        assert await client.xrange(f"{PREFIX}wal") == []  # its own prefix: allowed
        with pytest.raises(NoPermissionError):
            await client.flushall()
        with pytest.raises(NoPermissionError):
            await client.config_set("maxmemory", "1")
        with pytest.raises(NoPermissionError):
            await client.xrange("other:secret")
        with pytest.raises(NoPermissionError):
            await client.delete("other:secret")
        with pytest.raises(NoPermissionError):
            await client.acl_setuser(user, enabled=True, passwords=["+x"])
        with pytest.raises(NoPermissionError):  # a script may not reach outside the prefix either
            await client.eval("return redis.call('GET', KEYS[1])", 1, "other:secret")
    finally:
        await client.aclose()
    assert server.client().get("other:secret") == b"another appliance's"
    assert server.client().config_get("maxmemory")["maxmemory"] != "1"


async def test_the_flusher_cannot_take_a_rooms_dispatch_lock(server: RedisServer) -> None:
    client = make_client(server.settings(acl_user="flusher"))
    try:
        with pytest.raises(NoPermissionError):
            await client.set(f"{PREFIX}dispatch:room", "token")
    finally:
        await client.aclose()


async def test_a_password_is_the_users_own(server: RedisServer) -> None:
    """The master password does not open a program's user, nor one program's password another's."""
    settings = server.settings(acl_user="worker")
    for password in (server.password, acl.password(server.password, "flusher")):
        client = aioredis.Redis(
            unix_socket_path=str(settings.unix_socket), username="worker", password=password, driver_info=None
        )
        try:
            with pytest.raises((AuthenticationError, ResponseError)):
                await client.ping()
        finally:
            await client.aclose()
