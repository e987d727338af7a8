"""Many writer processes at once: nothing lost, nothing crosses conversations, order is by id."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import AgentSettings
from agent.store.store import ConversationStore
from harness.inspect import backlog, connect, stored_ids
from harness.processes import FlusherProcess, settings_env
from harness.servers import RedisServer, wait_until


def spawn(settings: AgentSettings, workdir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.appender", *args],
        env=settings_env(settings, workdir / "config"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out.split()


@pytest.mark.slow
async def test_50_processes_append_to_50_conversations(
    settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    flusher = FlusherProcess(settings, tmp_path).start()
    procs = {
        f"room-{i}": spawn(settings, tmp_path, "--room", f"room-{i}", "--count", "40", "--identity", f"p{i}")
        for i in range(50)
    }
    sent = {room: collect(proc) for room, proc in procs.items()}
    wait_until(lambda: backlog(redis_server.client(), settings) == 0, 60, "the stream drained")
    assert flusher.terminate() == 0
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT c.room, m.id::text, m.participant FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        ).fetchall()
    by_room: dict[str, list[str]] = {}
    for room, message_id, participant in rows:
        assert participant == f"p{str(room).split('-')[1]}"  # no message crossed into another conversation
        by_room.setdefault(str(room), []).append(str(message_id))
    assert {room: sorted(ids) for room, ids in by_room.items()} == {room: sorted(ids) for room, ids in sent.items()}
    assert len(rows) == 50 * 40


async def test_two_processes_append_to_one_conversation(
    settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    flusher = FlusherProcess(settings, tmp_path).start()
    a = spawn(
        settings,
        tmp_path,
        "--room",
        "left",
        "--conversation-id",
        "shared",
        "--count",
        "300",
        "--identity",
        "a",
    )
    b = spawn(
        settings,
        tmp_path,
        "--room",
        "right",
        "--conversation-id",
        "shared",
        "--count",
        "300",
        "--identity",
        "b",
    )
    sent = collect(a) + collect(b)
    wait_until(lambda: backlog(redis_server.client(), settings) == 0, 60, "the stream drained")
    assert flusher.terminate() == 0
    stored = stored_ids(settings, "shared")
    assert stored == sorted(sent)  # every message once, and PostgreSQL orders them by id
    async with ConversationStore(settings) as store:
        resumed = await store.open("third", conversation_id="shared")
        assert [m.id for m in resumed.window] == stored[-20:]
