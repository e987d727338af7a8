"""This store's phases: acknowledged appends (1 and 16 producers), durable throughput with the flusher as a real
process, and flush lag at a fixed offered load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from typing import Any

import psycopg

from agent.store.keys import Keys
from agent.store.store import Conversation, ConversationStore
from bench.environment import BenchError, Env, cpu_seconds, pg_kwargs
from bench.figures import Plan, Result, quantile
from harness.processes import FlusherProcess

PRODUCERS = 16
WARMUP = 50  # appends before measuring: connections, the script cache, the allocator
LAG_WINDOW = 20_000  # FlusherStats keeps the lags of this many recent messages


async def store_phases(env: Env, plan: Plan, messages: list[str], progress: Any) -> list[Result]:
    results = []
    for always in (False, True):
        if always and env.always is None:
            continue
        for producers in (1, PRODUCERS):
            progress(f"store append: {producers} producer(s), appendfsync {'always' if always else env.mode}")
            results.append(await store_append(env, plan, messages, producers=producers, always=always))
    progress("store durable throughput (flusher process)")
    results.append(await store_durable(env, plan, messages))
    progress(f"flush lag at {plan.lag_rate} msg/s")
    results += await store_flush_lag(env, plan, messages)
    return results


async def open_conversations(store: ConversationStore, env: Env, name: str, count: int) -> list[Conversation]:
    convs = [await store.open(f"bench-{env.tag}-{name}-{i}") for i in range(count)]
    env.conversations += [c.id for c in convs]
    return convs


async def warm_up(convs: list[Conversation], messages: list[str]) -> None:
    for i in range(max(1, WARMUP // len(convs))):
        await asyncio.gather(*(c.append("user", "alice", messages[i % len(messages)]) for c in convs))


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
    """Append at ``rate`` msg/s (a late send goes at once, none after the end); returns how many it sent."""
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


def around_redis(store: ConversationStore) -> str:
    """Appends that went around Redis (a timeout opened the breaker) are not the Redis path's figures: say so."""
    s = store.stats
    if s.appends_postgres + s.appends_spool == 0:
        return ""
    return f"{s.appends_postgres} appends went to PostgreSQL, {s.appends_spool} to the spool"


async def store_append(env: Env, plan: Plan, messages: list[str], *, producers: int, always: bool) -> Result:
    """Acknowledged append latency and throughput, ``producers`` tasks sharing one store, no flusher."""
    mode = "always" if always else env.mode
    name = f"append{producers}{mode}"
    async with ConversationStore(env.phase(name, always=always)) as store:
        convs = await open_conversations(store, env, name, producers)
        await warm_up(convs, messages)
        latencies: list[int] = []
        deadline = time.perf_counter_ns() + int(plan.append_s * 1e9)
        t0 = time.perf_counter_ns()
        await asyncio.gather(*(produce(c, messages, plan.append_n // producers, deadline, latencies) for c in convs))
        seconds = (time.perf_counter_ns() - t0) / 1e9
        await store.redis.client.unlink(store.redis.keys.stream)  # keep Redis small for the next phase
        who = "1 producer" if producers == 1 else f"{producers} producers"
        return Result.timed(
            f"append_{producers}_{mode}", f"store append, {who}, {mode}", latencies, seconds, around_redis(store)
        )


async def committed(conn: psycopg.AsyncConnection[Any], conversation_ids: list[str]) -> int:
    cur = await conn.execute("SELECT count(*) FROM messages WHERE conversation_id = ANY(%s)", (conversation_ids,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def store_durable(env: Env, plan: Plan, messages: list[str]) -> Result:
    """Messages/s from the first append until PostgreSQL holds them all, the flusher running as a real process;
    with the CPU each process spent per message, which bounds it on a small machine."""
    settings = env.phase("durable")
    flusher = FlusherProcess(settings, env.workdir / "durable").start()
    pids = {"bench": os.getpid(), "flusher": flusher.pid, **env.server_pids}
    try:
        async with (
            ConversationStore(settings) as store,
            await psycopg.AsyncConnection.connect(**pg_kwargs(settings), autocommit=True) as conn,
        ):
            convs = await open_conversations(store, env, "durable", PRODUCERS)
            ids = [c.id for c in convs]
            latencies: list[int] = []
            cpu_before = cpu_seconds(pids)
            deadline = time.perf_counter_ns() + int(plan.durable_s * 1e9)
            t0 = time.perf_counter_ns()
            await asyncio.gather(
                *(produce(c, messages, plan.durable_n // PRODUCERS, deadline, latencies) for c in convs)
            )
            acked_s = (time.perf_counter_ns() - t0) / 1e9
            while await committed(conn, ids) < len(latencies):
                if time.perf_counter_ns() > deadline + 60 * 10**9:
                    raise BenchError(f"the flusher did not commit {len(latencies)} messages; see {flusher.log}")
                await asyncio.sleep(0.01)
            seconds = (time.perf_counter_ns() - t0) / 1e9
            cpu = {k: v - cpu_before[k] for k, v in cpu_seconds(pids).items() if k in cpu_before}
            note = [f"all acked after {acked_s:.1f}s, all committed after {seconds:.1f}s", around_redis(store)]
    finally:
        flusher.terminate()
    us_per_msg = {k: v / len(latencies) * 1e6 for k, v in cpu.items()}
    note.append("CPU us/msg: " + ", ".join(f"{k} {v:.0f}" for k, v in us_per_msg.items()))
    if len(us_per_msg) == 4:  # all four processes measured: the CPU-bound ceiling of this machine
        cpus = os.cpu_count() or 1
        note.append(f"so {cpus} CPUs cap it at {cpus * 1e6 / sum(us_per_msg.values()):.0f} msg/s")
    return Result(
        f"durable_{PRODUCERS}",
        f"store durable, {PRODUCERS} producers + flusher",
        len(latencies),
        seconds,
        0,
        None,
        None,
        len(latencies) / seconds,
        "; ".join(filter(None, note)),
        {f"cpu_us_per_msg_{k}": v for k, v in us_per_msg.items()},
    )


async def staleness(conn: psycopg.AsyncConnection[Any], ids: list[str], stop: asyncio.Event) -> list[float]:
    """Client-side flush lag: every 50 ms, the age (ms) of the newest message PostgreSQL has committed."""
    query = (
        "SELECT max(last.created_at) FROM unnest(%s::text[]) AS c(cid) CROSS JOIN LATERAL"
        " (SELECT created_at FROM messages WHERE conversation_id = c.cid ORDER BY id DESC LIMIT 1) AS last"
    )
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
        async with (
            ConversationStore(settings) as store,
            await psycopg.AsyncConnection.connect(**pg_kwargs(settings), autocommit=True) as conn,
        ):
            convs = await open_conversations(store, env, "lag", PRODUCERS)
            stop = asyncio.Event()
            poller = asyncio.create_task(staleness(conn, [c.id for c in convs], stop), name="staleness")
            t0 = time.perf_counter_ns()
            sent = sum(
                await asyncio.gather(*(paced(c, messages, plan.lag_rate / PRODUCERS, plan.lag_s) for c in convs))
            )
            seconds = (time.perf_counter_ns() - t0) / 1e9
            stop.set()
            ages = sorted(await poller)
            stats = await settled_stats(store, keys, sent)
            note = around_redis(store)
    finally:
        flusher.terminate()
    rate = sent / seconds
    window = min(int(stats["persisted"]), LAG_WINDOW)
    offered = f"offered {plan.lag_rate} msg/s for {plan.lag_s:g}s, achieved {rate:.0f}"
    return [
        Result(
            "flush_lag",
            "flush lag (flusher's figures)",
            sent,
            seconds,
            window,
            float(stats["flush_lag_p50_ms"]),
            float(stats["flush_lag_p99_ms"]),
            rate,
            "; ".join(filter(None, [f"{offered}; ack to commit, last {window} messages", note])),
        ),
        Result(
            "pg_staleness",
            "PG staleness (client side)",
            sent,
            seconds,
            len(ages),
            quantile(ages, 0.5),
            quantile(ages, 0.99),
            rate,
            "age of the newest committed message, polled every 50 ms",
        ),
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
