"""Migrations: applied once, recorded, safe to run concurrently."""

from __future__ import annotations

import threading

from agent.resources import migrations
from agent.store.migrate import migrate
from harness.servers import PostgresServer


def test_migrations_apply_once_and_concurrently(pg: PostgresServer) -> None:
    pg.create_database("migrate_twice")
    results: list[list[str]] = []

    def run() -> None:
        with pg.connect("migrate_twice") as conn:
            results.append(migrate(conn))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    applied = sorted(name for names in results for name in names)
    assert applied == [name for _version, name, _sql in migrations()]  # each applied once, by one of them
    with pg.connect("migrate_twice") as conn:
        assert migrate(conn) == []
        rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
        assert rows == [(version, name) for version, name, _sql in migrations()]
        plan = conn.execute(
            "EXPLAIN SELECT id FROM messages WHERE conversation_id = 'c' ORDER BY id DESC LIMIT 20"
        ).fetchall()
        assert "Index" in " ".join(str(r[0]) for r in plan)  # last N of a conversation comes from an index
