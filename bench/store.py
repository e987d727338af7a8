"""Benchmark of the conversation store: acknowledged appends, durable throughput and flush lag, against a naive
per-message INSERT and langchain-postgres, on the same PostgreSQL and the same messages, in one run.

    python bench/store.py [--quick] [--json] [--use-config] [--profile]

Without --use-config it starts private Redis (appendfsync everysec and always) and PostgreSQL servers on
temporary directories; with it, it uses the running appliance's servers under its own key prefix and its own
conversations, and removes what it wrote. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ipaddress
import json
import math
import os
import platform
import pstats
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests.harness` when run as `python bench/store.py`

import orjson  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
import redis.utils  # noqa: E402
import uuid_utils  # noqa: E402
from psycopg import sql  # noqa: E402

from agent.settings import AgentSettings, FlusherSettings, SettingsError, StoreSettings, load_settings  # noqa: E402
from agent.store.keys import Keys  # noqa: E402
from agent.store.migrate import migrate  # noqa: E402
from agent.store.store import Conversation, ConversationStore  # noqa: E402
from tests.harness.processes import FlusherProcess  # noqa: E402
from tests.harness.servers import PostgresServer, RedisServer  # noqa: E402

PRODUCERS = 16
CONTENT_BYTES = 500
DISTINCT_MESSAGES = 256  # cycled through; enough that no contender benefits from caching one payload
WARMUP = 50  # appends per contender before measuring: connections, prepared statements, script cache


class BenchError(Exception):
    """A setup the benchmark refuses to run with; the message says what to change."""


@dataclass(frozen=True)
class Plan:
    """How much each phase does; every loop stops at its count or its time, whichever comes first."""

    append_n: int
    append_s: float
    durable_n: int
    durable_s: float
    lag_rate: int  # offered load, msg/s
    lag_s: float
    baseline_n: int
    baseline_s: float


FULL = Plan(append_n=60_000, append_s=12, durable_n=150_000, durable_s=40, lag_rate=5000, lag_s=10,
            baseline_n=20_000, baseline_s=10)
QUICK = Plan(append_n=15_000, append_s=3, durable_n=40_000, durable_s=8, lag_rate=5000, lag_s=4,
             baseline_n=5000, baseline_s=2.5)


@dataclass
class Result:
    key: str
    label: str
    messages: int  # acknowledged (or committed) during the measurement
    seconds: float
    samples: int  # latency samples behind p50/p99
    p50_ms: float | None
    p99_ms: float | None
    msg_per_s: float | None
    note: str = ""

    @classmethod
    def timed(cls, key: str, label: str, latencies_ns: list[int], seconds: float, note: str = "") -> Result:
        ordered = [ns / 1e6 for ns in sorted(latencies_ns)]
        return cls(key, label, len(ordered), seconds, len(ordered), quantile(ordered, 0.5),
                   quantile(ordered, 0.99), len(ordered) / seconds if seconds else None, note)


@dataclass
class Target:
    name: str
    value: str
    met: bool


@dataclass
class Report:
    header: dict[str, str]
    results: list[Result]
    ratios: dict[str, float | None] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)


@dataclass
class Env:
    """Where the contenders run; ``always`` is a second Redis with appendfsync always, if there is one."""

    settings: AgentSettings
    always: AgentSettings | None
    workdir: Path
    tag: str
    servers: str
    conversations: list[str] = field(default_factory=list)  # every one we created, for the clean-up

    def phase(self, name: str, *, always: bool = False) -> AgentSettings:
        """Settings with a key prefix and flusher consumer of this phase's own."""
        base = self.always if always and self.always else self.settings
        store = base.store.model_copy(update={"key_prefix": f"bench{self.tag}{name}:",
                                              "spool_dir": self.workdir / "spool"})
        flusher = base.flusher.model_copy(update={"consumer": f"bench-{self.tag}-{name}", "stats_every_s": 0.25})
        return base.model_copy(update={"store": store, "flusher": flusher})


def quantile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of sorted values."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def make_messages() -> list[str]:
    """The same ~500-byte contents for every contender: words of mixed length, a few non-ASCII letters."""
    rng = random.Random(7)
    words = ["the", "order", "arrived", "yesterday", "but", "déjà", "vu", "refund", "please", "naïve", "agent",
             "ticket", "number", "café", "shipping", "address", "changed", "thanks", "again", "when"]
    out = []
    for _ in range(DISTINCT_MESSAGES):
        text = ""
        while len(text.encode()) < CONTENT_BYTES:
            text += rng.choice(words) + " "
        out.append(text.encode()[:CONTENT_BYTES].decode(errors="ignore"))
    return out


STARTED = time.monotonic()


def progress(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {text}", file=sys.stderr, flush=True)


# --- environment -------------------------------------------------------------------------------------------


def private_env(stack: contextlib.ExitStack, workdir: Path, tag: str) -> Env:
    """Private PostgreSQL (migrated) and two private Redis servers, removed when ``stack`` closes."""
    pg = PostgresServer()
    stack.callback(pg.close)
    pg.start()
    pg.create_database("bench")
    with pg.connect("bench") as conn:
        migrate(conn)
    servers = {"everysec": RedisServer(), "always": RedisServer(appendfsync="always")}
    for server in servers.values():
        stack.callback(server.close)
        server.start()

    def settings(server: RedisServer) -> AgentSettings:
        return AgentSettings(redis=server.settings(), postgres=pg.settings("bench"),
                             store=StoreSettings(spool_dir=workdir / "spool"), flusher=FlusherSettings())

    return Env(settings(servers["everysec"]), settings(servers["always"]), workdir, tag,
               "private Redis (everysec; always) and PostgreSQL, unix socket and 127.0.0.1")


def configured_env(stack: contextlib.ExitStack, workdir: Path, tag: str) -> Env:
    """The running appliance's servers; a private Redis with appendfsync always beside it when we can start one."""
    try:
        settings = load_settings(AgentSettings)
    except SettingsError as exc:
        raise BenchError("; ".join(exc.errors)) from None
    check_local(settings)
    always: AgentSettings | None = None
    if shutil.which("redis-server"):
        server = RedisServer(appendfsync="always")
        stack.callback(server.close)
        server.start()
        always = settings.model_copy(update={"redis": server.settings()})
    return Env(settings, always, workdir, tag,
               f"configured Redis ({settings.redis.appendfsync}) and PostgreSQL"
               + ("; private Redis (always)" if always else ""))


def check_local(settings: AgentSettings) -> None:
    """Every packet stays on this machine: refuse servers reached over a network."""
    r, p = settings.redis, settings.postgres
    if r.unix_socket is None and not is_loopback(r.host):
        raise BenchError(f"redis.host: {r.host} is not loopback; the benchmark runs only against local servers")
    if not p.host.startswith("/") and not is_loopback(p.host):
        raise BenchError(f"postgres.host: {p.host} is not loopback; the benchmark runs only against local servers")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pg_kwargs(settings: AgentSettings) -> dict[str, Any]:
    pg = settings.postgres
    return {"conninfo": pg.conninfo(), "password": pg.password.get_secret_value() if pg.password else None}


def redis_client(settings: AgentSettings) -> redis.Redis:
    r = settings.redis
    password = r.password.get_secret_value() if r.password else None
    if r.unix_socket is not None:
        return redis.Redis(unix_socket_path=str(r.unix_socket), password=password, db=r.db)
    return redis.Redis(host=r.host, port=r.port, password=password, db=r.db)


def clean_up(env: Env) -> None:
    """Remove our keys and our conversations (they are real data only with --use-config, but tidy anyway)."""
    for settings in filter(None, (env.settings, env.always)):
        with contextlib.closing(redis_client(settings)) as client:
            keys = list(client.scan_iter(match=f"bench{env.tag}*", count=1000))
            for start in range(0, len(keys), 500):
                client.unlink(*keys[start:start + 500])
    with psycopg.connect(**pg_kwargs(env.settings), autocommit=True) as conn:
        conn.execute("DELETE FROM messages WHERE conversation_id = ANY(%s)", (env.conversations,))
        conn.execute("DELETE FROM conversations WHERE id = ANY(%s)", (env.conversations,))


def describe_libraries() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    hiredis = f"with hiredis {version('hiredis')}" if redis.utils.HIREDIS_AVAILABLE else "without hiredis"
    return {
        "redis-py": f"{redis.__version__} ({hiredis})",
        "orjson": orjson.__version__,
        "uuid-utils": version("uuid-utils"),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__} implementation, libpq {psycopg.pq.version()})",
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
    }


def describe_disk(directory: Path, seconds: float = 0.5) -> str:
    """What one commit's fsync costs here: it bounds every per-message-commit contender."""
    block, latencies = os.urandom(8192), []
    fd = os.open(directory / "fsync-probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        deadline = time.perf_counter_ns() + int(seconds * 1e9)
        for i in range(5000):
            os.pwrite(fd, block, i * len(block))
            t = time.perf_counter_ns()
            os.fdatasync(fd)
            latencies.append((time.perf_counter_ns() - t) / 1e6)
            if t > deadline:
                break
    finally:
        os.close(fd)
        (directory / "fsync-probe").unlink()
    ordered = sorted(latencies)
    return (f"fdatasync of 8 kB in {directory.parent}: p50 {quantile(ordered, 0.5):.3f} ms,"
            f" p99 {quantile(ordered, 0.99):.3f} ms ({len(ordered)} samples)")


def describe_servers(env: Env) -> str:
    with contextlib.closing(redis_client(env.settings)) as client:
        redis_version = str(client.info("server").get("redis_version", "?"))
    with psycopg.connect(**pg_kwargs(env.settings)) as conn:
        row = conn.execute("SELECT current_setting('server_version'), current_setting('fsync'),"
                           " current_setting('synchronous_commit')").fetchone()
    assert row is not None
    return f"{env.servers}; Redis {redis_version}; PostgreSQL {row[0]} (fsync {row[1]}, synchronous_commit {row[2]})"


# --- this store --------------------------------------------------------------------------------------------


async def open_conversations(store: ConversationStore, env: Env, name: str, count: int) -> list[Conversation]:
    convs = [await store.open(f"bench-{env.tag}-{name}-{i}") for i in range(count)]
    env.conversations += [c.id for c in convs]
    return convs


async def produce(conv: Conversation, messages: list[str], count: int, deadline_ns: int, out: list[int]) -> None:
    """Append back to back, recording each acknowledged append's latency, until ``count`` or the deadline."""
    start = random.randrange(len(messages))
    for i in range(count):
        t = time.perf_counter_ns()
        if t > deadline_ns:
            return
        await conv.append("user", "alice", messages[(start + i) % len(messages)])
        out.append(time.perf_counter_ns() - t)


async def paced(conv: Conversation, messages: list[str], rate: float, seconds: float) -> int:
    """Append at ``rate`` msg/s (late sends go at once, never later than the end); returns how many it sent."""
    interval_ns, start = 1e9 / rate, time.perf_counter_ns()
    end = start + int(seconds * 1e9)
    sent = 0
    while (due := start + int(sent * interval_ns)) < end:
        now = time.perf_counter_ns()
        if now >= end:
            break
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
        await conv.append("user", "alice", messages[sent % len(messages)])
        sent += 1
    return sent


async def warm_up(convs: list[Conversation], messages: list[str]) -> None:
    for i in range(max(1, WARMUP // len(convs))):
        await asyncio.gather(*(c.append("user", "alice", messages[i % len(messages)]) for c in convs))


def store_note(store: ConversationStore) -> str:
    """Appends that did not go to Redis (a timeout opened the breaker) make the figures not the Redis path's."""
    s = store.stats
    if s.appends_postgres + s.appends_spool == 0:
        return ""
    return f"{s.appends_postgres} appends went to PostgreSQL, {s.appends_spool} to the spool"


async def store_append(env: Env, plan: Plan, messages: list[str], *, producers: int, always: bool) -> Result:
    """Acknowledged append latency and throughput, ``producers`` tasks sharing one store, no flusher."""
    mode = "always" if always else env.settings.redis.appendfsync
    name = f"append{producers}{mode}"
    settings = env.phase(name, always=always)
    async with ConversationStore(settings) as store:
        convs = await open_conversations(store, env, name, producers)
        await warm_up(convs, messages)
        latencies: list[int] = []
        deadline = time.perf_counter_ns() + int(plan.append_s * 1e9)
        t0 = time.perf_counter_ns()
        await asyncio.gather(*(produce(c, messages, plan.append_n // producers, deadline, latencies) for c in convs))
        seconds = (time.perf_counter_ns() - t0) / 1e9
        await store.redis.client.unlink(store.redis.keys.stream)  # keep Redis small for the next phase
        who = "1 producer" if producers == 1 else f"{producers} producers"
        return Result.timed(f"append_{producers}_{mode}", f"store append, {who}, {mode}", latencies, seconds,
                            store_note(store))


async def committed(conn: psycopg.AsyncConnection[Any], conversation_ids: list[str]) -> int:
    cur = await conn.execute("SELECT count(*) FROM messages WHERE conversation_id = ANY(%s)", (conversation_ids,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def store_durable(env: Env, plan: Plan, messages: list[str]) -> Result:
    """Messages/s from the first append until PostgreSQL holds them all, with the flusher as a real process."""
    settings = env.phase("durable")
    flusher = FlusherProcess(settings, env.workdir / "durable").start()
    try:
        async with (ConversationStore(settings) as store,
                    await psycopg.AsyncConnection.connect(**pg_kwargs(settings), autocommit=True) as conn):
            convs = await open_conversations(store, env, "durable", PRODUCERS)
            ids = [c.id for c in convs]
            latencies: list[int] = []
            deadline = time.perf_counter_ns() + int(plan.durable_s * 1e9)
            t0 = time.perf_counter_ns()
            await asyncio.gather(*(produce(c, messages, plan.durable_n // PRODUCERS, deadline, latencies)
                                   for c in convs))
            acked_s = (time.perf_counter_ns() - t0) / 1e9
            while await committed(conn, ids) < len(latencies):
                if time.perf_counter_ns() > deadline + 60 * 10**9:
                    raise BenchError(f"the flusher did not commit {len(latencies)} messages; see {flusher.log}")
                await asyncio.sleep(0.01)
            seconds = (time.perf_counter_ns() - t0) / 1e9
            note = f"all acknowledged after {acked_s:.2f}s, all committed after {seconds:.2f}s"
            return Result(f"durable_{PRODUCERS}", f"store durable, {PRODUCERS} producers + flusher",
                          len(latencies), seconds, 0, None, None, len(latencies) / seconds,
                          "; ".join(filter(None, [note, store_note(store)])))
    finally:
        flusher.terminate()


async def staleness(conn: psycopg.AsyncConnection[Any], ids: list[str], stop: asyncio.Event) -> list[float]:
    """Client-side flush lag: every 50 ms, the age (ms) of the newest message PostgreSQL has committed."""
    query = ("SELECT max(last.created_at) FROM unnest(%s::text[]) AS c(cid) CROSS JOIN LATERAL"
             " (SELECT created_at FROM messages WHERE conversation_id = c.cid ORDER BY id DESC LIMIT 1) AS last")
    ages: list[float] = []
    while not stop.is_set():
        cur = await conn.execute(query, (ids,))
        row = await cur.fetchone()
        if row and row[0] is not None:
            ages.append(max(0.0, time.time() - row[0].timestamp()) * 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    return ages


async def store_flush_lag(env: Env, plan: Plan, messages: list[str]) -> list[Result]:
    """Flush lag at a fixed offered load, from a fresh flusher's published figures and from the client side."""
    settings = env.phase("lag")
    keys = Keys(settings.store.key_prefix)
    flusher = FlusherProcess(settings, env.workdir / "lag").start()
    try:
        async with (ConversationStore(settings) as store,
                    await psycopg.AsyncConnection.connect(**pg_kwargs(settings), autocommit=True) as conn):
            convs = await open_conversations(store, env, "lag", PRODUCERS)
            stop = asyncio.Event()
            poller = asyncio.create_task(staleness(conn, [c.id for c in convs], stop), name="staleness")
            t0 = time.perf_counter_ns()
            sent = sum(await asyncio.gather(*(paced(c, messages, plan.lag_rate / PRODUCERS, plan.lag_s)
                                              for c in convs)))
            seconds = (time.perf_counter_ns() - t0) / 1e9
            stop.set()
            ages = sorted(await poller)
            stats = await settled_stats(store, keys, sent)
    finally:
        flusher.terminate()
    rate = sent / seconds
    window = min(int(stats.get("persisted", 0)), 20_000)  # FlusherStats keeps the last 20,000 lags
    offered = f"offered {plan.lag_rate} msg/s for {plan.lag_s:g}s, achieved {rate:.0f}"
    return [
        Result("flush_lag", "flush lag (flusher's figures)", sent, seconds, window,
               float(stats["flush_lag_p50_ms"]), float(stats["flush_lag_p99_ms"]), rate,
               f"{offered}; lag of the last {window} messages, ack to commit"),
        Result("pg_staleness", "PG staleness (client side)", sent, seconds, len(ages),
               quantile(ages, 0.5), quantile(ages, 0.99), rate,
               "age of the newest committed message, polled every 50 ms"),
    ]


async def settled_stats(store: ConversationStore, keys: Keys, sent: int) -> dict[str, str]:
    """The flusher's published figures once it has persisted all ``sent`` messages and its backlog is 0."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        raw = await store.redis.client.hgetall(keys.flusher_stats)
        stats = {text(k): text(v) for k, v in raw.items()}
        if int(stats.get("backlog", -1)) == 0 and int(stats.get("persisted", 0)) >= sent:
            return stats
        await asyncio.sleep(0.05)
    raise BenchError(f"the flusher did not report a backlog of 0 within 60s ({keys.flusher_stats})")


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- baselines ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_table(conn: psycopg.Connection[Any], name: str) -> Iterator[sql.Identifier]:
    table = sql.Identifier(name)
    try:
        yield table
    finally:
        conn.rollback()
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.commit()


def timed_loop(plan: Plan, messages: list[str], write: Any) -> tuple[list[int], float]:
    """Call ``write(content)`` one message at a time until the count or the time is reached."""
    for content in messages[:WARMUP]:
        write(content)
    latencies: list[int] = []
    deadline = time.perf_counter_ns() + int(plan.baseline_s * 1e9)
    t0 = time.perf_counter_ns()
    for i in range(plan.baseline_n):
        t = time.perf_counter_ns()
        if t > deadline:
            break
        write(messages[i % len(messages)])
        latencies.append(time.perf_counter_ns() - t)
    return latencies, (time.perf_counter_ns() - t0) / 1e9


def naive_insert(env: Env, plan: Plan, messages: list[str]) -> Result:
    """One INSERT per message in autocommit, one connection, a table shaped like ``messages``."""
    with psycopg.connect(**pg_kwargs(env.settings)) as conn, scratch_table(conn, f"bench_{env.tag}_naive") as t:
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE messages INCLUDING ALL)").format(t))
        conn.commit()
        conn.autocommit = True
        insert = sql.SQL("INSERT INTO {} (conversation_id, id, role, participant, content, created_at, metadata)"
                         " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)").format(t)
        cid = str(uuid_utils.uuid7())

        def write(content: str) -> None:
            conn.execute(insert, (cid, str(uuid_utils.uuid7()), "user", "alice", content, datetime.now(UTC), "{}"))

        latencies, seconds = timed_loop(plan, messages, write)
        conn.autocommit = False
    return Result.timed("naive_insert", "naive INSERT, autocommit, 1 producer", latencies, seconds)


def langchain_postgres(env: Env, plan: Plan, messages: list[str]) -> Result:
    """PostgresChatMessageHistory.add_messages, one message per call, on a sync psycopg connection."""
    from langchain_core.messages import HumanMessage
    from langchain_postgres import PostgresChatMessageHistory

    name = f"bench_{env.tag}_langchain"
    with psycopg.connect(**pg_kwargs(env.settings)) as conn, scratch_table(conn, name):
        PostgresChatMessageHistory.create_tables(conn, name)
        history = PostgresChatMessageHistory(name, str(uuid.uuid4()), sync_connection=conn)

        def write(content: str) -> None:
            history.add_messages([HumanMessage(content=content)])

        latencies, seconds = timed_loop(plan, messages, write)
    version = metadata.version("langchain-postgres")
    return Result.timed("langchain_postgres", "langchain-postgres add_messages, 1 producer", latencies, seconds,
                        f"langchain-postgres {version}, langchain-core {metadata.version('langchain-core')}")


# --- the run -----------------------------------------------------------------------------------------------


async def store_phases(env: Env, plan: Plan, messages: list[str]) -> list[Result]:
    results = []
    for always in (False, True):
        if always and env.always is None:
            continue
        for producers in (1, PRODUCERS):
            progress(f"store append: {producers} producer(s), appendfsync {'always' if always else 'default'}")
            results.append(await store_append(env, plan, messages, producers=producers, always=always))
    progress("store durable throughput (flusher process)")
    results.append(await store_durable(env, plan, messages))
    progress(f"flush lag at {plan.lag_rate} msg/s")
    results += await store_flush_lag(env, plan, messages)
    return results


def run(env: Env, plan: Plan) -> Report:
    messages = make_messages()
    header = describe_libraries() | {"servers": describe_servers(env), "disk": describe_disk(env.workdir)}
    results = asyncio.run(store_phases(env, plan, messages))
    progress("baseline: naive INSERT")
    results.append(naive_insert(env, plan, messages))
    progress("baseline: langchain-postgres")
    results.append(langchain_postgres(env, plan, messages))
    report = Report(header, results)
    judge(report)
    return report


def judge(report: Report) -> None:
    """Ratios against the baselines, and the targets."""
    by = {r.key: r for r in report.results}
    append = next(r for r in report.results if r.key.startswith("append_1_"))
    durable, lag = by["durable_16"], by["flush_lag"]
    for base in ("naive_insert", "langchain_postgres"):
        b = by[base]
        report.ratios[f"durable throughput / {base} throughput"] = ratio(durable.msg_per_s, b.msg_per_s)
        report.ratios[f"{base} p50 / store append p50"] = ratio(b.p50_ms, append.p50_ms)
    langchain_x = report.ratios["durable throughput / langchain_postgres throughput"] or 0.0
    offered_ok = (lag.msg_per_s or 0) >= 0.95 * 5000
    report.targets = [
        Target(f"append p50 <= 0.2 ms, 1 producer ({append.key.split('_')[-1]})", f"{append.p50_ms:.3f} ms",
               (append.p50_ms or math.inf) <= 0.2),
        Target(f"append p99 <= 1 ms, 1 producer ({append.key.split('_')[-1]})", f"{append.p99_ms:.3f} ms",
               (append.p99_ms or math.inf) <= 1.0),
        Target("durable throughput >= 25x langchain-postgres", f"{langchain_x:.1f}x", langchain_x >= 25),
        Target("flush lag p99 <= 250 ms at 5k msg/s", f"{lag.p99_ms:.1f} ms at {lag.msg_per_s:.0f} msg/s",
               offered_ok and (lag.p99_ms or math.inf) <= 250),
    ]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def profile_append(env: Env, plan: Plan) -> None:
    """cProfile of the 1-producer append loop, to stderr: where an append's time goes."""
    messages = make_messages()
    profiler = cProfile.Profile()

    async def phase() -> None:
        async with ConversationStore(env.phase("profile")) as store:
            [conv] = await open_conversations(store, env, "profile", 1)
            await warm_up([conv], messages)
            profiler.enable()
            for i in range(plan.append_n):
                await conv.append("user", "alice", messages[i % len(messages)])
            profiler.disable()

    asyncio.run(phase())
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)


# --- output ------------------------------------------------------------------------------------------------


def render_table(report: Report) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None or math.isnan(value) else format(value, fmt)

    machine = ("servers", "disk")
    lines = ["hot path: " + ", ".join(f"{k} {v}" for k, v in report.header.items() if k not in machine)]
    lines += [f"{k}: {report.header[k]}" for k in machine] + [""]
    head = f"{'figure':<44} {'messages':>8} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8} {'msg/s':>7}  note"
    lines += [head, "-" * len(head)]
    for r in report.results:
        lines.append(f"{r.label:<44} {r.messages:>8} {r.samples or '-':>8} {num(r.p50_ms, '.3f'):>8} "
                     f"{num(r.p99_ms, '.3f'):>8} {num(r.msg_per_s, '.0f'):>7}  {r.note}")
    lines += ["", "ratios:"]
    lines += [f"  {name:<58} {num(value, '.1f')}x" for name, value in report.ratios.items()]
    lines += ["", "targets:"]
    lines += [f"  [{'met' if t.met else 'NOT MET':>7}] {t.name:<48} {t.value}" for t in report.targets]
    return "\n".join(lines)


def render_json(report: Report) -> str:
    return json.dumps(asdict(report), indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="smaller counts: about 30 seconds")
    parser.add_argument("--use-config", action="store_true",
                        help="use the running appliance's Redis and PostgreSQL (its settings file and environment)")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the 1-producer append loop with cProfile (to stderr)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    tag = uuid.uuid4().hex[:8]
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            progress("starting servers" if not args.use_config else "loading the appliance's settings")
            env = (configured_env if args.use_config else private_env)(stack, workdir, tag)
            stack.callback(clean_up, env)
            if args.profile:
                profile_append(env, plan)
                return
            report = run(env, plan)
            progress("done")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(render_json(report) if args.json else render_table(report))


if __name__ == "__main__":
    main()
