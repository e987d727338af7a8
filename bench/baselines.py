"""What an agent would do without this store, on the same PostgreSQL with the same messages: one INSERT per
message in autocommit, and langchain-postgres's chat history. Each gets a scratch table, dropped afterwards."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import psycopg
import uuid_utils
from psycopg import sql

from bench.environment import Env, pg_kwargs
from bench.figures import Plan, Result

WARMUP = 50  # writes before measuring: the connection, prepared statements


@contextlib.contextmanager
def scratch_table(conn: psycopg.Connection[Any], name: str) -> Iterator[sql.Identifier]:
    table = sql.Identifier(name)
    try:
        yield table
    finally:
        conn.rollback()
        conn.autocommit = False
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.commit()


def timed_loop(plan: Plan, messages: list[str], write: Callable[[str], None]) -> tuple[list[int], float]:
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
        insert = sql.SQL(
            "INSERT INTO {} (conversation_id, id, role, participant, content, created_at, metadata)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)"
        ).format(t)
        cid = str(uuid_utils.uuid7())

        def write(content: str) -> None:
            conn.execute(insert, (cid, str(uuid_utils.uuid7()), "user", "alice", content, datetime.now(UTC), "{}"))

        latencies, seconds = timed_loop(plan, messages, write)
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
    versions = (
        f"langchain-postgres {metadata.version('langchain-postgres')}, "
        f"langchain-core {metadata.version('langchain-core')}"
    )
    return Result.timed(
        "langchain_postgres", "langchain-postgres add_messages, 1 producer", latencies, seconds, versions
    )
