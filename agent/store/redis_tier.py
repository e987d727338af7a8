"""The Redis tier: per conversation a capped list headed by a coverage marker, and one write-ahead stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from agent.resources import lua
from agent.settings import RedisSettings, StoreSettings
from agent.store import acl, wal
from agent.store.keys import Keys
from agent.store.records import ConversationEvent, InvalidMessage, Message

COMPLETE = b"H:complete"


def connection_kwargs(settings: RedisSettings, timeout_s: float) -> dict[str, Any]:
    """What redis-py's clients (asyncio's and the blocking one) need to reach the configured Redis: its address
    (over verified TLS when set), the user and password (an ACL user's derived from the password), the timeouts;
    no retry with backoff."""
    secret = settings.password.get_secret_value() if settings.password else None
    if settings.acl_user is not None and secret is not None:
        secret = acl.password(secret, settings.acl_user)
    address: dict[str, Any] = (
        {"unix_socket_path": str(settings.unix_socket)}
        if settings.unix_socket is not None
        else {"host": settings.host, "port": settings.port}
    )
    if settings.tls:
        address |= {
            "ssl": True,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": str(settings.tls_ca_file) if settings.tls_ca_file else None,
            "ssl_certfile": str(settings.tls_cert_file) if settings.tls_cert_file else None,
            "ssl_keyfile": str(settings.tls_key_file) if settings.tls_key_file else None,
        }
    return {
        **address,
        "db": settings.db,
        "username": settings.acl_user or settings.username,
        "password": secret,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 0,
        "driver_info": None,  # no CLIENT SETINFO: Redis 7.0 lacks it, and it is a round trip per connection
    }


def make_client(settings: RedisSettings) -> aioredis.Redis:
    """A client that fails fast: one retry on a refused or reset connection (a restarted Redis), none on timeout."""
    return aioredis.Redis(
        **connection_kwargs(settings, settings.timeout_s),
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


@dataclass(frozen=True, slots=True)
class CachedList:
    complete: bool  # the list holds the conversation's last min(cap, total) messages, as far as Redis knows
    messages: list[Message]


class RedisTier:
    def __init__(self, client: aioredis.Redis, settings: StoreSettings) -> None:
        self.client = client
        self.keys = Keys(settings.key_prefix)
        self._cap = settings.cache_size
        self._ttl = settings.cache_ttl_s
        self._append = client.register_script(lua("append"))
        self._reseed = client.register_script(lua("reseed"))
        self._lifecycle = client.register_script(lua("lifecycle"))
        self._settle = client.register_script(lua("settle"))

    async def append(self, message: Message, *, mark_partial: bool) -> None:
        """Returns once Redis has the message in the list and the stream: the acknowledgement."""
        await self._append(
            keys=[self.keys.conversation(message.conversation_id), self.keys.stream],
            args=[
                message.encode(),
                self._cap,
                self._ttl,
                "1" if mark_partial else "0",
                wal.conversation_digest(message.conversation_id),
            ],
        )

    async def record(self, event: ConversationEvent, *, new: bool, to_stream: bool) -> None:
        """Set the room's mapping (and a fresh complete list for a new conversation); with ``to_stream``, also
        log the event for the flusher because PostgreSQL could not take it."""
        await self._lifecycle(
            keys=[
                self.keys.room(event.room or ""),
                self.keys.conversation(event.conversation_id),
                self.keys.stream,
            ],
            args=[
                event.conversation_id,
                event.status,
                event.encode(),
                self._ttl,
                "1" if new else "0",
                "1" if to_stream else "0",
                "1" if event.room is not None else "0",
            ],
        )

    async def settle(self, event: ConversationEvent) -> None:
        """Apply an event Redis missed to the room's mapping, if it still names the conversation (see settle.lua)."""
        await self._settle(
            keys=[self.keys.room(event.room or "")], args=[event.conversation_id, event.status, self._ttl]
        )

    async def drop_cached(self, conversation_ids: Iterable[str]) -> None:
        """Drop lists that lack messages imported around Redis (a spool), so resume merges even while PostgreSQL,
        which knows of the import, cannot be asked. DEL is allowed at maxmemory."""
        keys = [self.keys.conversation(cid) for cid in conversation_ids]
        if keys:
            await self.client.delete(*keys)

    async def room_mapping(self, room: str) -> tuple[str, str] | None:
        return await self.room_mapping_of(self.client, self.keys, room)

    @staticmethod
    async def room_mapping_of(client: aioredis.Redis, keys: Keys, room: str) -> tuple[str, str] | None:
        """(conversation id, status) a room name currently maps to."""
        found: list[Any] = await client.hmget(keys.room(room), ["id", "status"])
        if found[0] is None or found[1] is None:
            return None
        return found[0].decode(), found[1].decode()

    async def cached(self, conversation_id: str) -> CachedList:
        raw = await self.client.lrange(self.keys.conversation(conversation_id), 0, -1)
        if not raw:
            return CachedList(complete=False, messages=[])
        return CachedList(complete=raw[0] == COMPLETE, messages=[Message.decode(item) for item in raw[1:]])

    async def reseed(self, messages: Sequence[Message]) -> None:
        """Make the list whole again after resume merged the tiers."""
        if not messages:
            return
        args: list[bytes | str | int] = [self._cap, self._ttl]
        for message in messages[-self._cap :]:
            args += [message.id, message.encode()]
        await self._reseed(keys=[self.keys.conversation(messages[0].conversation_id)], args=args)

    async def pending(self, conversation_id: str) -> list[Message]:
        """The conversation's messages still in the stream (not yet flushed). Costs a scan of the backlog."""
        wanted = wal.conversation_digest(conversation_id)
        found: list[Message] = []
        async for fields in self._backlog():
            if wal.is_message_of(fields, wanted):
                with suppress(InvalidMessage):  # a poison entry: the flusher sets it aside
                    found.append(Message.decode(fields[wal.VALUE]))
        return found

    async def room_events(self, room: str) -> list[ConversationEvent]:
        """The room's conversation events still in the stream: written there because PostgreSQL was down, so
        they are what open can know of the room while it stays down. Costs a scan of the backlog."""
        found: list[ConversationEvent] = []
        async for fields in self._backlog():
            if wal.is_event(fields):
                with suppress(InvalidMessage):
                    event = ConversationEvent.decode(fields[wal.VALUE])
                    if event.room == room:
                        found.append(event)
        return found

    async def _backlog(self, chunk: int = 1000) -> AsyncIterator[dict[bytes, bytes]]:
        start = "-"
        while True:
            entries: Any = await self.client.xrange(self.keys.stream, min=start, max="+", count=chunk)
            for _entry_id, fields in entries:
                yield fields
            if len(entries) < chunk:
                return
            start = "(" + entries[-1][0].decode()
