"""Where an append's time goes: each layer of one append timed on its own, from the raw socket round trip up to
``Conversation.append``, the Redis-side cost of the script, and a cProfile of the append loop."""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import socket
import statistics
import time
from collections.abc import Awaitable, Callable

import uuid_utils

from agent.resources import lua
from agent.settings import AgentSettings
from agent.store.keys import digest
from agent.store.records import Message, check_id, new_message
from agent.store.store import Conversation, ConversationStore
from bench.environment import Env
from bench.store_phases import PRODUCERS, open_conversations, warm_up

ROUNDS = 5000
BATCHES = 5
Timing = tuple[float, float]  # wall and this process's CPU, microseconds per call


async def anatomy(env: Env, messages: list[str]) -> tuple[list[tuple[str, Timing]], str]:
    """(step, timing) rows, and the cProfile of the append loop as text."""
    settings = env.phase("anatomy")
    rows = python_steps(messages[0])
    if settings.redis.unix_socket is not None:
        rows.append(("raw unix socket PING, blocking (kernel + Redis floor)", raw_ping(settings)))
    async with ConversationStore(settings) as store:
        convs = await open_conversations(store, env, "anatomy", PRODUCERS)
        await warm_up(convs, messages)
        [solo] = await open_conversations(store, env, "anatomy-solo", 1)
        rows += await redis_steps(store, convs[0].id, solo, messages[0])
        rows += await concurrency_steps(store, [c.id for c in convs], messages[0])
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(ROUNDS):
            await convs[0].append("user", "alice", messages[i % len(messages)])
        profiler.disable()
        usec = (await store.redis.client.info("commandstats")).get("cmdstat_evalsha", {}).get("usec_per_call")
        if usec is not None:
            rows.append(("Redis server time per EVALSHA (INFO commandstats)", (float(usec), 0.0)))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    return rows, out.getvalue()


def timed(fn: Callable[[], object]) -> Timing:
    """Per call: the median of BATCHES batch means, as this small VM's wall-clock timings are noisy."""
    for _ in range(200):
        fn()
    walls, cpus = [], []
    for _ in range(BATCHES):
        t0, c0 = time.perf_counter_ns(), time.process_time_ns()
        for _ in range(ROUNDS // BATCHES):
            fn()
        walls.append((time.perf_counter_ns() - t0) / (ROUNDS // BATCHES) / 1000)
        cpus.append((time.process_time_ns() - c0) / (ROUNDS // BATCHES) / 1000)
    return statistics.median(walls), statistics.median(cpus)


async def atimed(fn: Callable[[], Awaitable[object]]) -> Timing:
    for _ in range(200):
        await fn()
    walls, cpus = [], []
    for _ in range(BATCHES):
        t0, c0 = time.perf_counter_ns(), time.process_time_ns()
        for _ in range(ROUNDS // BATCHES):
            await fn()
        walls.append((time.perf_counter_ns() - t0) / (ROUNDS // BATCHES) / 1000)
        cpus.append((time.process_time_ns() - c0) / (ROUNDS // BATCHES) / 1000)
    return statistics.median(walls), statistics.median(cpus)


def python_steps(content: str) -> list[tuple[str, Timing]]:
    cid = str(uuid_utils.uuid7())
    message = new_message(cid, "user", "alice", content, max_content_bytes=1 << 16, max_metadata_bytes=1 << 14)
    raw = message.encode()
    return [
        (
            "new_message: validation, UUIDv7, time",
            timed(
                lambda: new_message(
                    cid, "user", "alice", content, max_content_bytes=1 << 16, max_metadata_bytes=1 << 14
                )
            ),
        ),
        ("  of which check_id of a 36-char id", timed(lambda: check_id("conversation_id", cid))),
        ("  of which str(uuid_utils.uuid7())", timed(lambda: str(uuid_utils.uuid7()))),
        ("Message.encode (orjson)", timed(message.encode)),
        ("digest (blake2b), twice per append", timed(lambda: (digest(cid), digest(cid)))),
        ("Message.decode, in the flusher (validates again)", timed(lambda: Message.decode(raw))),
    ]


def raw_ping(settings: AgentSettings) -> Timing:
    """A PING over a plain blocking socket: what the kernel and Redis cost, without any client library."""
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(settings.redis.unix_socket))
        if password:
            sock.sendall(f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n".encode())
            sock.recv(64)

        def ping() -> None:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            sock.recv(64)

        return timed(ping)


async def redis_steps(store: ConversationStore, cid: str, conv: Conversation, content: str) -> list[tuple[str, Timing]]:
    client, tier, cap, ttl = store.redis.client, store.redis, store.settings.cache_size, store.settings.cache_ttl_s
    message = new_message(cid, "user", "alice", content, max_content_bytes=1 << 16, max_metadata_bytes=1 << 14)
    sha = await client.script_load(lua("append"))
    args = (tier.keys.conversation(cid), tier.keys.stream, message.encode(), cap, ttl, "0", digest(cid))
    return [
        ("redis-py asyncio PING", await atimed(client.ping)),
        ("redis-py EVALSHA append.lua, arguments ready", await atimed(lambda: client.evalsha(sha, 2, *args))),
        ("RedisTier.append (keys, encode, Script)", await atimed(lambda: tier.append(message, mark_partial=False))),
        ("ConversationStore.write (breaker)", await atimed(lambda: store.write(message, bypassed_before=False))),
        ("Conversation.append (all of it)", await atimed(lambda: conv.append("user", "alice", content))),
    ]


async def concurrency_steps(store: ConversationStore, cids: list[str], content: str) -> list[tuple[str, Timing]]:
    """16 appends at once, each on its own connection (what the store does) or in one pipeline: per message."""
    tier, cap, ttl = store.redis, store.settings.cache_size, store.settings.cache_ttl_s
    batch = [
        new_message(cid, "user", "alice", content, max_content_bytes=1 << 16, max_metadata_bytes=1 << 14)
        for cid in cids
    ]
    sha = await tier.client.script_load(lua("append"))

    async def gathered() -> None:
        await asyncio.gather(*(tier.append(m, mark_partial=False) for m in batch))

    async def pipelined() -> None:
        async with tier.client.pipeline(transaction=False) as pipe:
            for m in batch:
                pipe.evalsha(
                    sha,
                    2,
                    tier.keys.conversation(m.conversation_id),
                    tier.keys.stream,
                    m.encode(),
                    cap,
                    ttl,
                    "0",
                    digest(m.conversation_id),
                )
            await pipe.execute()

    n = len(batch)
    per_message = [(wall / n, cpu / n) for wall, cpu in (await atimed(gathered), await atimed(pipelined))]
    return [
        (f"{n} concurrent RedisTier.append, per message", per_message[0]),
        (f"{n} appends in one pipeline, per message", per_message[1]),
    ]


def render_anatomy(rows: list[tuple[str, Timing]]) -> str:
    title = f"one append, layer by layer ({ROUNDS} calls, median of {BATCHES} batch means)"
    lines = [f"{title:<62} {'wall us':>8} {'CPU us':>8}", "-" * 80]
    lines += [f"{name:<62} {wall:>8.1f} {cpu:>8.1f}" for name, (wall, cpu) in rows]
    return "\n".join(lines)
