"""Forget a conversation: delete its messages and its record from every tier, spool files included.

The order matters because the flusher copies the write-ahead stream and the spool into PostgreSQL: their entries
of the conversation go first, PostgreSQL is cleared only once no flusher can still hold one of them in memory,
and the Redis keys (caches nobody copies) go last. Redis' append-only file still holds every deleted write until
it is rewritten, so forget ends with a rewrite. A conversation a room is still writing can come back: forget it
once its room has ended.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import ResponseError

from agent.resources import lua
from agent.settings import AgentSettings
from agent.store import wal
from agent.store.keys import GROUP, Keys
from agent.store.records import check_id
from agent.store.spool import Spool, fsync_dir
from appliance.errors import ApplianceError
from appliance.files import write_atomic
from appliance.stores import on_redis, postgres_connection, redis_client

CHUNK = 1000
# A spool file is locked by its writer for one fsynced line, by the flusher for one import.
SPOOL_LOCK_TIMEOUT_S = 30.0
# A rewrite copies the live data set (at most Redis' cap, 2 GB): minutes on a slow disk.
AOF_REWRITE_WAIT_S = 600.0


@dataclass
class Forgotten:
    """What was removed, per tier."""

    conversation_id: str
    status: str | None = None  # its status in PostgreSQL before, when it was there
    postgres_messages: int = 0
    postgres_conversation: bool = False
    postgres_dead_letters: int = 0  # entries the flusher set aside in PostgreSQL when Redis refused them
    stream_entries: int = 0  # messages and events still waiting for the flusher
    dead_letters: int = 0
    redis_keys: int = 0  # the cached list and the room's mapping
    spool_lines: int = 0
    spool_files: int = 0  # rewritten or removed
    aof_rewritten: bool = False  # Redis' append-only file rewritten without it
    rooms: set[str] = field(default_factory=set)

    @property
    def found(self) -> bool:
        return any(
            (
                self.postgres_messages,
                self.postgres_conversation,
                self.postgres_dead_letters,
                self.stream_entries,
                self.dead_letters,
                self.redis_keys,
                self.spool_lines,
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversation": self.conversation_id,
            "postgres": {
                "messages": self.postgres_messages,
                "conversation": self.postgres_conversation,
                "dead_letters": self.postgres_dead_letters,
            },
            "redis": {
                "stream_entries": self.stream_entries,
                "dead_letters": self.dead_letters,
                "keys": self.redis_keys,
                "aof_rewritten": self.aof_rewritten,
            },
            "spool": {"lines": self.spool_lines, "files": self.spool_files},
        }


def forget(settings: AgentSettings, conversation_id: str, *, flusher_wait_s: float | None = None) -> Forgotten:
    """Delete ``conversation_id`` from every tier and say what was removed.

    ``flusher_wait_s`` bounds the wait for a flusher to finish a batch holding the conversation's entries
    (default: the flusher's claim_idle_ms, after which a consumer counts as dead).
    """
    check_id("conversation_id", conversation_id)
    out = Forgotten(conversation_id)
    keys = Keys(settings.store.key_prefix)
    wait_s = settings.flusher.claim_idle_ms / 1000 + 5 if flusher_wait_s is None else flusher_wait_s
    client = redis_client(settings.redis)
    try:
        held = on_redis(settings.redis, lambda: _drop_stream_entries(client, keys, out))
        _drop_spooled(Spool(settings.store.spool_dir), out)
        on_redis(
            settings.redis,
            lambda: _wait_released(client, keys, held, dead_after_ms=settings.flusher.claim_idle_ms, wait_s=wait_s),
        )
        _drop_postgres(settings, out)
        on_redis(settings.redis, lambda: _drop_redis_keys(client, keys, out))
        on_redis(settings.redis, lambda: _compact_streams(client, keys))
        out.aof_rewritten = on_redis(settings.redis, lambda: _rewrite_aof(client, wait_s=AOF_REWRITE_WAIT_S))
    finally:
        client.close()
    return out


def _drop_stream_entries(client: redis.Redis, keys: Keys, out: Forgotten) -> set[str]:
    """XDEL the conversation's entries still in the write-ahead stream; returns their ids."""
    wanted = wal.conversation_digest(out.conversation_id)
    ids: list[str] = []
    for entry_id, fields in _scan(client, keys.stream):
        if wal.is_message_of(fields, wanted) or (
            wal.is_event(fields) and _belongs(wal.conversation_of(fields.get(wal.VALUE, b"")), out)
        ):
            ids.append(entry_id)
    for start in range(0, len(ids), CHUNK):
        out.stream_entries += int(client.xdel(keys.stream, *ids[start : start + CHUNK]))
    return set(ids)


def _wait_released(client: redis.Redis, keys: Keys, ids: set[str], *, dead_after_ms: int, wait_s: float) -> None:
    """Wait until no living flusher can hold a deleted entry in memory, about to commit it to PostgreSQL.

    Delivered entries stay in the group's pending list until the flusher committed and acknowledged them; a
    flusher that reads them again after XDEL gets them empty and only acknowledges them. So an entry is safe
    once it left that list, or once its consumer has been idle longer than the flusher's claim_idle_ms (its
    own sign of a dead consumer).
    """
    deadline = time.monotonic() + wait_s
    while ids:
        try:
            pipe = client.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xpending_range(keys.stream, GROUP, min=entry_id, max=entry_id, count=1)
            pending: list[Any] = [row for rows in pipe.execute() for row in rows]
            if not pending:
                return
            idle = {c["name"]: int(c["idle"]) for c in client.xinfo_consumers(keys.stream, GROUP)}
        except ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                return  # no group: no flusher has read anything
            raise
        alive = {_text(p["message_id"]) for p in pending if idle.get(p["consumer"], dead_after_ms) < dead_after_ms}
        if not alive:
            return
        if time.monotonic() > deadline:
            raise ApplianceError(
                f"a flusher still holds {len(alive)} entries of this conversation after {wait_s:.0f}s:"
                " is it stuck? check `appliance status`, then run forget again"
            )
        time.sleep(0.05)


def _rewrite_aof(client: redis.Redis, *, wait_s: float) -> bool:
    """Rewrite Redis' append-only file from the data set as it is now, so the deleted writes leave the disk; False
    when Redis keeps none. A rewrite already running may have copied the data from before the deletes: it is
    waited for, then ours starts."""

    def persistence() -> dict[str, Any]:
        return dict(client.info("persistence"))

    if not int(persistence().get("aof_enabled", 0)):
        return False
    deadline = time.monotonic() + wait_s
    started = False
    while True:
        info = persistence()
        busy = int(info.get("aof_rewrite_in_progress", 0)) or int(info.get("aof_rewrite_scheduled", 0))
        if started and not busy:
            if info.get("aof_last_bgrewrite_status") != "ok":
                raise ApplianceError("Redis could not rewrite its append-only file: see `appliance logs redis`")
            return True
        if not started and not busy:
            try:
                client.bgrewriteaof()  # started now, or scheduled after a snapshot in progress
                started = True
                continue
            except ResponseError as exc:
                if "in progress" not in str(exc):
                    raise
        if time.monotonic() > deadline:
            raise ApplianceError(
                f"Redis' append-only file rewrite did not finish within {wait_s:.0f}s: the deleted text is still"
                " in it; run forget again later"
            )
        time.sleep(0.05)


def _drop_spooled(spool: Spool, out: Forgotten) -> None:
    """Rewrite each spool file without the conversation's lines, under the file's lock, atomically."""
    for path in spool.files():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # imported and removed meanwhile
        try:
            _lock(fd, path)
            info = os.fstat(fd)
            if info.st_nlink == 0:
                continue  # the flusher imported it while we waited: PostgreSQL has it, cleared next
            kept: list[bytes] = []
            dropped = 0
            for line in _read_all(fd).splitlines(keepends=True):
                if _belongs(wal.conversation_of(line), out):
                    dropped += 1
                else:
                    kept.append(line)
            if not dropped:
                continue
            if any(line.strip() for line in kept):
                _replace(path, b"".join(kept), info)
            else:
                path.unlink()
            fsync_dir(path.parent)
            out.spool_lines += dropped
            out.spool_files += 1
        finally:
            os.close(fd)  # releases the lock: a writer waiting on the old file sees it unlinked and reopens


def _drop_postgres(settings: AgentSettings, out: Forgotten) -> None:
    with postgres_connection(settings.postgres) as conn, conn.transaction():
        # The row lock waits for a flusher's transaction that already touched the conversation to commit, so its
        # messages are deleted too rather than landing after us.
        row = conn.execute(
            "SELECT status, room FROM conversations WHERE id = %s FOR UPDATE", (out.conversation_id,)
        ).fetchone()
        if row is not None:
            out.status = str(row[0])
            if row[1] is not None:
                out.rooms.add(str(row[1]))
        out.postgres_messages = conn.execute(
            "DELETE FROM messages WHERE conversation_id = %s", (out.conversation_id,)
        ).rowcount
        deleted = conn.execute("DELETE FROM conversations WHERE id = %s", (out.conversation_id,)).rowcount
        out.postgres_conversation = deleted > 0
        # Dead letters hold the entry as it was (no column names its conversation): each is read to tell.
        dead = [
            row_id
            for row_id, raw in conn.execute("SELECT id, raw FROM dead_letters").fetchall()
            if isinstance(raw, bytes) and _belongs(wal.conversation_of(raw), out)  # bytea is bytes
        ]
        if dead:
            out.postgres_dead_letters = conn.execute("DELETE FROM dead_letters WHERE id = ANY(%s)", (dead,)).rowcount


def _drop_redis_keys(client: redis.Redis, keys: Keys, out: Forgotten) -> None:
    """Its dead letters, the cached list, and the mapping of each of its rooms that still names it."""
    dead = [entry_id for entry_id, fields in _scan(client, keys.dead) if _dead_letter_of(fields, out)]
    for start in range(0, len(dead), CHUNK):
        out.dead_letters += int(client.xdel(keys.dead, *dead[start : start + CHUNK]))
    out.redis_keys += int(client.delete(keys.conversation(out.conversation_id)))
    for room in sorted(out.rooms):
        room_key = keys.room(room)

        def drop_mapping(pipe: Pipeline, room_key: str = room_key) -> None:
            if pipe.hget(room_key, "id") == out.conversation_id.encode():
                pipe.multi()
                pipe.delete(room_key)

        out.redis_keys += sum(client.transaction(drop_mapping, room_key) or [])


def _compact_streams(client: redis.Redis, keys: Keys) -> None:
    """Rebuild both streams from their live entries (compact.lua): a deleted entry's bytes stay in its stream
    node, in memory and in the next AOF rewrite, until every entry of the node is gone, however long ago the
    flusher deleted it. Blocks Redis for the copy of the backlog (about 1 s per 100k entries)."""
    compact = client.register_script(lua("compact"))
    compact(keys=[keys.stream], args=[GROUP])
    compact(keys=[keys.dead], args=[""])


def _scan(client: redis.Redis, stream: str) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    start = "-"
    while True:
        entries: Any = client.xrange(stream, min=start, max="+", count=CHUNK)
        for raw_id, fields in entries:
            yield _text(raw_id), fields or {}
        if len(entries) < CHUNK:
            return
        start = "(" + _text(entries[-1][0])


def _belongs(found: tuple[str | None, str | None], out: Forgotten) -> bool:
    """Whether a record is the conversation's; notes the room of its events."""
    conversation, room = found
    if conversation != out.conversation_id:
        return False
    if room is not None:
        out.rooms.add(room)
    return True


def _dead_letter_of(fields: dict[bytes, bytes], out: Forgotten) -> bool:
    """Dead letters hold an entry's encoded record, or a whole spool line."""
    return _belongs(wal.conversation_of(fields.get(wal.VALUE, b"")), out)


def _lock(fd: int, path: Path) -> None:
    deadline = time.monotonic() + SPOOL_LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ApplianceError(f"{path}: locked for {SPOOL_LOCK_TIMEOUT_S:.0f}s; run forget again") from None
            time.sleep(0.02)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _replace(path: Path, data: bytes, like: os.stat_result) -> None:
    """Write ``data`` to a temporary name the flusher does not import, then rename it over ``path``."""
    write_atomic(path, data, mode=0o600, owner=(like.st_uid, like.st_gid))  # the service user still imports it


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
