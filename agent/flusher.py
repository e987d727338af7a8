"""The write-behind flusher: Redis stream -> PostgreSQL, batched, idempotent, crash-safe.

Entries are acknowledged (XACK + XDEL) only after the PostgreSQL commit, so a flusher killed at any point leaves
them pending, and the next one (same consumer name, kept in the spool directory) reads its own pending entries
first. At maxmemory it still makes progress: it uses only commands Redis allows when full (reads, XACK, XDEL, DEL
and scripts flagged allow-oom that do not grow memory), deletes what it stored before it writes anything, and sets
poison aside in PostgreSQL when Redis refuses its dead-letter stream. Run it with ``python -m agent.flusher``;
SIGTERM stops reading, finishes the batch, drains what is left and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError, ResponseError

from agent import faults, metrics
from agent.logs import brief, setup_logging
from agent.resources import lua
from agent.settings import AgentSettings, load_or_exit
from agent.store import pg_tier, wal
from agent.store.keys import GROUP, Keys
from agent.store.records import ConversationEvent, InvalidMessage, Message
from agent.store.redis_tier import RedisTier, make_client
from agent.store.spool import Spool, fsync_dir

log = logging.getLogger("agent.flusher")
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, RedisError, OSError)
DEAD_LETTER_MAXLEN = 100_000
DRAIN_TIMEOUT_S = 20.0
CONSUMER_FILE = "flusher-id"  # in the spool directory: the one directory of its own each install has


@dataclass
class FlusherStats:
    """Counters and gauges; published for `appliance status` and the metrics exporter."""

    persisted: int = 0
    events: int = 0
    batches: int = 0
    dead_lettered: int = 0
    dead_lettered_postgres: int = 0  # of those, the ones Redis refused (full), kept in PostgreSQL's dead_letters
    spool_imported: int = 0
    errors: int = 0
    backlog: int = 0
    lag_ms: float = 0.0  # age of the oldest entry not yet flushed
    spool_files: int = 0
    # ack -> commit delay of recent messages, for percentiles
    recent_lags_ms: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))

    def percentile(self, q: float) -> float:
        if not self.recent_lags_ms:
            return 0.0
        ordered = sorted(self.recent_lags_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def published(self) -> dict[str, str]:
        values = {k: v for k, v in asdict(self).items() if k != "recent_lags_ms"}
        values |= {"flush_lag_p50_ms": self.percentile(0.5), "flush_lag_p99_ms": self.percentile(0.99)}
        values |= {"pid": os.getpid(), "updated_at": time.time()}
        return {k: str(v) for k, v in values.items()}


@dataclass
class Entry:
    """One stream entry, decoded; ``record`` is None for a poison entry, with ``error`` saying why."""

    entry_id: str
    raw: bytes
    record: Message | ConversationEvent | None
    error: str = ""


class Flusher:
    def __init__(self, settings: AgentSettings, consumer: str | None = None) -> None:
        self.settings = settings.flusher
        self.store_settings = settings.store
        # Reads block for block_ms, so the socket must wait longer than that.
        redis_settings = settings.redis.model_copy(
            update={"timeout_s": max(settings.redis.timeout_s, settings.flusher.block_ms / 1000 + 2)}
        )
        self.redis = make_client(redis_settings)
        self.pool = pg_tier.make_pool(settings.postgres, min_size=1)
        self.keys = Keys(settings.store.key_prefix)
        self.spool = Spool(settings.store.spool_dir)
        self.consumer = consumer or settings.flusher.consumer or install_consumer(settings.store.spool_dir)
        self.stats = FlusherStats()
        self.rooms = RedisTier(self.redis, settings.store)
        self._publish = self.redis.register_script(lua("stats"))
        self._group = self.redis.register_script(lua("group"))
        self._stopping = asyncio.Event()
        self._reread_pending = True  # start with our own pending entries

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Flush until asked to stop, then drain and return."""
        await self.pool.open(wait=False)
        try:
            await self._until_ready(self.ensure_group)  # before the claim loop, which needs the group too
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._flush_loop(), name="flush")
                tg.create_task(self._every(self.settings.claim_every_s, self.claim_stale), name="claim")
                tg.create_task(self._every(self.settings.spool_scan_s, self.import_spool), name="spool")
                tg.create_task(self._every(self.settings.stats_every_s, self.publish_stats), name="stats")
        finally:
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        with contextlib.suppress(*TRANSIENT):
            await self.publish_stats()
        await self.pool.close()
        await self.redis.aclose()

    async def _every(self, interval: float, step: Callable[[], Awaitable[Any]]) -> None:
        while not self._stopping.is_set():
            try:
                await step()
            except TRANSIENT as exc:
                self.stats.errors += 1
                log.warning("%s: %s", step.__name__, brief(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            await self._step(block=True)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            if not await self._step(block=False):
                log.info("drained; exiting")
                return
        log.warning("stopping with entries left in the stream; the next flusher takes them")

    async def _step(self, *, block: bool) -> int:
        """Read and flush one batch; returns how many entries it handled (0: nothing to do, or a failure)."""
        try:
            entries = await self.read_batch(block=block)
            if entries:
                await self.flush(entries)
            return len(entries)
        except TRANSIENT as exc:
            self.stats.errors += 1
            self._reread_pending = True
            log.warning("flush failed, retrying: %s", brief(exc))
            if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                await self._until_ready(self.ensure_group)  # the stream was deleted or Redis lost its data
            await asyncio.sleep(0.5)
            return 0

    async def _until_ready(self, step: Callable[[], Awaitable[Any]]) -> None:
        while not self._stopping.is_set():
            try:
                await step()
                return
            except TRANSIENT as exc:
                log.warning("waiting for redis: %s", brief(exc))
                await asyncio.sleep(0.5)

    async def ensure_group(self) -> None:
        await self._group(keys=[self.keys.stream], args=[GROUP])

    async def read_batch(self, *, block: bool) -> list[Entry]:
        """Our own pending entries first (after a restart or a failure), then new ones."""
        if self._reread_pending:
            found = await self.redis.xreadgroup(
                GROUP, self.consumer, {self.keys.stream: "0"}, count=self.settings.batch_size
            )
            entries = _entries(found)
            if entries:
                return entries
            self._reread_pending = False
        found = await self.redis.xreadgroup(
            GROUP,
            self.consumer,
            {self.keys.stream: ">"},
            count=self.settings.batch_size,
            block=self.settings.block_ms if block else None,
        )
        return _entries(found)

    async def flush(self, entries: list[Entry]) -> None:
        """Commit a batch to PostgreSQL, acknowledge and delete what it stored, then set poison aside."""
        good = [e for e in entries if e.record is not None]
        poison = await self._store(good, bypass=False)
        poison += [e for e in entries if e.record is None and e.raw]
        faults.point("flusher.after_commit")
        poisoned = {e.entry_id for e in poison}
        # Deletes first: at maxmemory they free the room the dead letters' own write needs.
        await self._acknowledge([e.entry_id for e in entries if e.entry_id not in poisoned])
        if poison:
            await self._dead_letter(poison)
            await self._acknowledge([e.entry_id for e in poison])
        now_ms = time.time() * 1000
        for entry in good:
            if isinstance(entry.record, Message) and entry.entry_id not in poisoned:
                lag_ms = now_ms - int(entry.entry_id.split("-")[0])
                self.stats.recent_lags_ms.append(lag_ms)
                metrics.flush_lag().observe(max(0.0, lag_ms / 1000))
        self.stats.batches += 1

    async def _acknowledge(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        # Not MULTI: at maxmemory Redis refuses to queue any command. Delete first: an entry deleted but still
        # pending is read back empty and only acknowledged, while one acknowledged but not deleted would stay.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xdel(self.keys.stream, *ids)
            pipe.xack(self.keys.stream, GROUP, *ids)
            await pipe.execute()

    async def _store(self, entries: Sequence[Entry], *, bypass: bool) -> list[Entry]:
        """Write entries in one transaction; if PostgreSQL rejects the data, find the entries it rejects
        one by one and return them as poison. Connection failures propagate (the batch is retried)."""
        if not entries:
            return []
        try:
            await self._write(entries, bypass=bypass)
            return []
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            if len(entries) == 1:
                entries[0].error = f"rejected by postgres: {brief(exc)}"
                return [entries[0]]
        poison: list[Entry] = []
        for entry in entries:
            poison += await self._store([entry], bypass=bypass)
        return poison

    async def _write(self, entries: Sequence[Entry], *, bypass: bool) -> None:
        messages = [e.record for e in entries if isinstance(e.record, Message)]
        events = [e.record for e in entries if isinstance(e.record, ConversationEvent)]
        async with self.pool.connection() as conn, conn.transaction():
            await pg_tier.write_batch(conn, messages, events, bypass=bypass)
            faults.point("flusher.after_write")
        self.stats.persisted += len(messages)
        self.stats.events += len(events)

    async def _dead_letter(self, poison: Sequence[Entry]) -> None:
        """Into the Redis dead-letter stream; if Redis refuses it (full), into PostgreSQL's dead_letters table.
        Either way before the entries are deleted, so none is lost; a failure of both propagates (retried)."""
        where = self.keys.dead
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry in poison:
                    pipe.xadd(
                        self.keys.dead,
                        {"entry": entry.entry_id, "reason": entry.error, "v": entry.raw},
                        maxlen=DEAD_LETTER_MAXLEN,
                        approximate=True,
                    )
                await pipe.execute()
        except RedisError as exc:
            log.warning("redis refused %d dead letters (%s): keeping them in postgres", len(poison), brief(exc))
            async with self.pool.connection() as conn:
                await pg_tier.write_dead_letters(conn, [(e.entry_id, e.error, e.raw) for e in poison])
            self.stats.dead_lettered_postgres += len(poison)
            where = "postgres table dead_letters"
        self.stats.dead_lettered += len(poison)
        for entry in poison:
            log.error("entry %s set aside in %s: %s", entry.entry_id, where, entry.error)

    async def claim_stale(self) -> None:
        """Take over entries another consumer left pending too long (it died)."""
        start = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.keys.stream,
                GROUP,
                self.consumer,
                self.settings.claim_idle_ms,
                start_id=start,
                count=self.settings.batch_size,
            )  # not justid: redis-py then drops the cursor
            if reply[1]:
                self._reread_pending = True
                log.info("claimed %d stale entries", len(reply[1]))
            start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            if start == "0-0":
                return

    async def import_spool(self) -> None:
        """Import the spool files no writer holds, idempotently, then remove them."""
        for path in self.spool.files():
            with self.spool.claim(path) as spooled:
                if spooled is None:
                    continue
                records: list[Message | ConversationEvent] = [*spooled.events, *spooled.messages]
                entries = [Entry(path.name, r.encode(), r) for r in records]
                entries += [Entry(path.name, line, None, reason) for line, reason in spooled.bad_lines]
                poison = await self._store([e for e in entries if e.record is not None], bypass=True)
                poison += [e for e in entries if e.record is None]
                if poison:
                    await self._dead_letter(poison)
                await self.rooms.drop_cached({m.conversation_id for m in spooled.messages})
                for event in spooled.events:  # Redis did not take them when they happened
                    if event.room is not None:
                        await self.rooms.settle(event)
                self.spool.discard(path)
                self.stats.spool_imported += len(spooled.messages)
                log.info("imported %d messages from spool file %s", len(spooled.messages), path.name)

    async def publish_stats(self) -> None:
        self.stats.backlog = await self.redis.xlen(self.keys.stream)
        oldest: Any = await self.redis.xrange(self.keys.stream, count=1)
        self.stats.lag_ms = max(0.0, time.time() * 1000 - int(oldest[0][0].split(b"-")[0])) if oldest else 0.0
        self.stats.spool_files = len(self.spool.files())
        ttl = max(5, int(self.settings.stats_every_s * 5))  # stale figures vanish with a dead flusher
        await self._publish(
            keys=[self.keys.flusher_stats], args=[ttl, *(x for kv in self.stats.published().items() for x in kv)]
        )


def install_consumer(directory: Path) -> str:
    """This install's consumer name, made once and kept in ``directory``: distinct from another install's on the
    same host (which shares the hostname), and the same after a restart, so a restarted flusher reads its own
    pending entries first."""
    path = directory / CONSUMER_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
    tmp = directory / f".{CONSUMER_FILE}.{os.getpid()}"
    tmp.write_text(name + "\n", encoding="utf-8")
    try:
        os.link(tmp, path)  # never replaces a name another process made meanwhile
    except FileExistsError:
        name = path.read_text(encoding="utf-8").strip()
    finally:
        tmp.unlink()
    fsync_dir(directory)
    return name


def _entries(reply: Any) -> list[Entry]:
    out: list[Entry] = []
    for _stream, items in reply or []:
        for raw_id, fields in items:
            entry_id = raw_id.decode()
            if not fields:  # deleted after delivery: only the acknowledgement is left to do
                out.append(Entry(entry_id, b"", None, "deleted"))
                continue
            raw = fields.get(wal.VALUE) or repr(fields).encode()
            try:
                out.append(Entry(entry_id, raw, wal.decode(fields)))
            except InvalidMessage as exc:
                out.append(Entry(entry_id, raw, None, str(exc)))
    return out


async def _serve(settings: AgentSettings) -> None:
    flusher = Flusher(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, flusher.request_stop)
    log.info("flusher %s started", flusher.consumer)
    await flusher.run()


def main() -> None:
    setup_logging()
    faults.arm_from_env(os.environ)
    settings = load_or_exit(AgentSettings)
    setup_logging(settings.logging)  # now at the configured level and format
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
