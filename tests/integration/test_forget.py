"""``appliance forget``: a conversation leaves every tier (PostgreSQL, the Redis list, the room's mapping, the
write-ahead stream, dead letters, the spool) and a running flusher does not write it back."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent.flusher import Flusher
from agent.settings import AgentSettings
from agent.store.keys import GROUP, Keys, digest
from agent.store.records import Message, new_message
from agent.store.spool import Spool
from agent.store.store import Conversation, ConversationStore
from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.forget import forget
from appliance.stores import postgres_connection
from harness.inspect import backlog, conversation_status, stored_ids
from harness.processes import FlusherProcess, settings_env
from harness.servers import RedisServer, wait_until


def spooled(store: ConversationStore, conversation_id: str, content: str) -> Message:
    """A message written to the spool, as the store does when Redis and PostgreSQL are both down."""
    message = new_message(conversation_id, "user", "u", content, max_content_bytes=1000, max_metadata_bytes=1000)
    store.spool.write_message(message)
    return message


def flush_everything(settings: AgentSettings, redis_server: RedisServer, workdir: Path) -> None:
    flusher = FlusherProcess(settings, workdir).start()
    try:
        wait_until(lambda: backlog(redis_server.client(), settings) == 0, 30, "the stream drained")
        wait_until(lambda: not Spool(settings.store.spool_dir).files(), 30, "the spool imported")
    finally:
        assert flusher.terminate() == 0


def stream_conversations(redis_server: RedisServer, settings: AgentSettings) -> set[bytes]:
    entries: Any = redis_server.client().xrange(Keys(settings.store.key_prefix).stream)
    return {fields[b"h"] for _id, fields in entries if fields.get(b"k") == b"m"}


async def in_every_tier(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path, *rooms: str
) -> list[tuple[Conversation, list[Message]]]:
    """Conversations with messages in PostgreSQL, in the stream (not flushed yet) and in the spool."""
    made = []
    for room in rooms:
        conv = await store.open(room)
        made.append((conv, [await conv.append("user", "u", f"{room} flushed {i}") for i in range(3)]))
    flush_everything(settings, redis_server, tmp_path / "flusher")
    for conv, sent in made:
        sent += [await conv.append("assistant", "agent", f"{conv.room} waiting {i}") for i in range(2)]
        sent.append(spooled(store, conv.id, f"{conv.room} spooled"))
    return made


async def test_forget_removes_it_from_every_tier_and_nothing_comes_back(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    (doomed, _), (kept, kept_sent) = await in_every_tier(store, settings, redis_server, tmp_path, "doomed", "kept")
    keys = Keys(settings.store.key_prefix)
    client = redis_server.client()
    client.xadd(keys.dead, {"entry": "1-1", "reason": "test", "v": doomed.window[0].encode()})
    client.xadd(keys.dead, {"entry": "1-2", "reason": "test", "v": kept.window[0].encode()})
    # Dead letters the flusher kept in PostgreSQL (Redis refused them), one of each conversation.
    with postgres_connection(settings.postgres) as conn:
        for entry, message in (("2-1", doomed.window[1]), ("2-2", kept.window[1])):
            conn.execute(
                "INSERT INTO dead_letters (entry, reason, raw) VALUES (%s, 'test', %s)", (entry, message.encode())
            )

    removed = forget(settings, doomed.id)

    assert removed.as_dict() == {
        "conversation": doomed.id,
        "postgres": {"messages": 3, "conversation": True, "dead_letters": 1},
        "redis": {"stream_entries": 2, "dead_letters": 1, "keys": 2, "aof_rewritten": True},  # keys: list, mapping
        "spool": {"lines": 1, "files": 1},
    }
    assert stored_ids(settings, doomed.id) == []
    assert conversation_status(settings, doomed.id) is None
    assert not client.exists(keys.conversation(doomed.id), keys.room("doomed"))
    assert stream_conversations(redis_server, settings) == {digest(kept.id).encode()}
    assert Spool(settings.store.spool_dir).messages_for(doomed.id) == []
    assert [m.content for m in Spool(settings.store.spool_dir).messages_for(kept.id)] == ["kept spooled"]
    assert len(Spool(settings.store.spool_dir).files()) == 1  # one file held both: rewritten without doomed's line
    assert client.xlen(keys.dead) == 1
    with postgres_connection(settings.postgres) as conn:
        assert conn.execute("SELECT entry FROM dead_letters").fetchall() == [("2-2",)]

    flush_everything(settings, redis_server, tmp_path / "after")

    assert stored_ids(settings, doomed.id) == []
    assert conversation_status(settings, doomed.id) is None
    assert stored_ids(settings, kept.id) == sorted(m.id for m in kept_sent)
    again = await store.open("doomed")  # the room's name now starts a new, empty conversation
    assert again.id != doomed.id
    assert list(again.window) == []


async def test_the_append_only_file_no_longer_holds_the_text(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    doomed = await store.open("doomed")
    kept = await store.open("kept")
    await doomed.append("user", "u", "my card number is 4111-1111-1111-1111")
    await kept.append("user", "u", "nothing secret here")
    aof = redis_server.dir / "appendonlydir"

    def holding(text: bytes) -> list[str]:
        return [path.name for path in aof.iterdir() if text in path.read_bytes()]

    assert holding(b"4111-1111-1111-1111")  # written before the reply: the AOF has it
    removed = forget(settings, doomed.id)
    assert removed.aof_rewritten
    # Redis unlinks the files the rewrite replaced in a background thread, just after.
    wait_until(lambda: not holding(b"4111-1111-1111-1111"), 10, "no AOF file holding the forgotten text")
    assert holding(b"nothing secret here")  # the rest of the data set is still there
    # The stream was rebuilt under the flusher's group: what it had not stored yet, it still stores.
    flusher = FlusherProcess(settings, tmp_path).start()
    try:
        wait_until(lambda: backlog(redis_server.client(), settings) == 0, 30, "the stream drained")
    finally:
        assert flusher.terminate() == 0
    assert len(stored_ids(settings, kept.id)) == 1


async def test_a_running_flusher_does_not_write_it_back(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    doomed = await store.open("doomed")
    kept = await store.open("kept")
    kept_sent = []
    for i in range(3000):  # a backlog the flusher is still draining, batch by batch, while forget runs
        await doomed.append("user", "u", f"doomed {i}")
        kept_sent.append(await kept.append("user", "u", f"kept {i}"))
    spooled(store, doomed.id, "doomed spooled")
    # Small batches: 1,200 of them, seconds of work, so forget starts while most of the backlog is still there
    # (at 50 a batch a loaded machine once let the flusher drain it all first: nothing to race with).
    flusher = FlusherProcess(settings, tmp_path, {"APPLIANCE_FLUSHER__BATCH_SIZE": "5"}).start(ready=False)
    try:
        wait_until(lambda: stored_ids(settings, doomed.id), 30, "the flusher started on the backlog")
        removed = forget(settings, doomed.id)
        assert removed.stream_entries > 0  # it really raced with the flusher
        wait_until(lambda: backlog(redis_server.client(), settings) == 0, 60, "the stream drained")
        wait_until(lambda: not Spool(settings.store.spool_dir).files(), 30, "the spool imported")
        flusher.running()
    finally:
        assert flusher.terminate() == 0
    assert stored_ids(settings, doomed.id) == []
    assert conversation_status(settings, doomed.id) is None
    assert stored_ids(settings, kept.id) == [m.id for m in kept_sent]


async def test_forget_waits_for_a_batch_the_flusher_holds_then_deletes_what_it_committed(
    store: ConversationStore, settings: AgentSettings
) -> None:
    conv = await store.open("doomed")
    sent = [await conv.append("user", "u", f"m{i}") for i in range(5)]
    as_flusher = settings.redis.model_copy(update={"acl_user": "flusher"})
    flusher = Flusher(settings.model_copy(update={"redis": as_flusher}), consumer="holding")
    await flusher.pool.open()
    try:
        await flusher.ensure_group()
        held = await flusher.read_batch(block=False)  # in the flusher's memory, about to be committed
        assert [e.entry_id for e in held if isinstance(e.record, Message)] and len(held) == len(sent)
        # While the batch is held, forget cannot finish: past its wait it refuses, before PostgreSQL is touched.
        with pytest.raises(ApplianceError, match="a flusher still holds 5 entries"):
            forget(settings, conv.id, flusher_wait_s=0.5)
        await flusher.flush(held)  # commits what it held, then acknowledges
        removed = forget(settings, conv.id)
    finally:
        await flusher.pool.close()
        await flusher.redis.aclose()
    assert removed.stream_entries == 0  # the refused forget deleted them
    assert removed.postgres_messages == 5  # what the flusher committed meanwhile
    assert stored_ids(settings, conv.id) == []
    assert conversation_status(settings, conv.id) is None


async def test_entries_a_dead_consumer_left_pending_are_not_written_later(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    conv = await store.open("doomed")
    for i in range(5):
        await conv.append("user", "u", f"m{i}")
    client = redis_server.client()
    stream = Keys(settings.store.key_prefix).stream
    client.xgroup_create(stream, GROUP, id="0")
    client.xreadgroup(GROUP, "died-mid-batch", {stream: ">"})  # read, never acknowledged

    forget(settings, conv.id)  # waits at most claim_idle_ms (1 s here) for that consumer

    flusher = FlusherProcess(settings, tmp_path).start()  # claims the dead consumer's entries: they are empty
    try:
        wait_until(lambda: not client.xpending(stream, GROUP)["pending"], 30, "the stale entries claimed")
    finally:
        assert flusher.terminate() == 0
    assert stored_ids(settings, conv.id) == []
    assert conversation_status(settings, conv.id) is None


async def test_a_live_flusher_that_keeps_its_entries_makes_forget_fail_before_postgres(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer
) -> None:
    conv = await store.open("doomed")
    await conv.append("user", "u", "hello")
    client = redis_server.client()
    stream = Keys(settings.store.key_prefix).stream
    client.xgroup_create(stream, GROUP, id="0")
    client.xreadgroup(GROUP, "stuck", {stream: ">"})
    stop = threading.Event()

    def look_alive() -> None:  # reads again and again, never acknowledges: a flusher stuck in its batch
        while not stop.wait(0.1):
            client.xreadgroup(GROUP, "stuck", {stream: ">"}, count=1)

    alive = threading.Thread(target=look_alive)
    alive.start()
    try:
        with pytest.raises(ApplianceError, match="a flusher still holds 1 entries of this conversation"):
            forget(settings, conv.id, flusher_wait_s=0.5)
    finally:
        stop.set()
        alive.join()
    assert conversation_status(settings, conv.id) == "active"  # PostgreSQL untouched: run forget again
    client.xack(stream, GROUP, *[p["message_id"] for p in client.xpending_range(stream, GROUP, "-", "+", 10)])
    assert forget(settings, conv.id).postgres_conversation


async def test_cli_asks_then_prints_what_it_removed(
    store: ConversationStore, settings: AgentSettings, tmp_path: Path
) -> None:
    conv = await store.open("room")
    await conv.append("user", "u", "hello")
    env = settings_env(settings, tmp_path / "cli")
    runner = CliRunner()

    refused = runner.invoke(main, ["forget", conv.id], input="n\n", env=env)
    assert refused.exit_code == 1
    assert conversation_status(settings, conv.id) == "active"

    done = runner.invoke(main, ["forget", conv.id, "--yes", "--json"], env=env)
    assert done.exit_code == 0, done.output
    assert '"stream_entries": 1' in done.stdout
    assert "note: the conversation was active" in done.stderr
    assert conversation_status(settings, conv.id) is None

    again = runner.invoke(main, ["forget", conv.id, "--yes"], env=env)
    assert again.exit_code == 1
    assert again.stderr == f"error: conversation {conv.id!r}: nothing stored in any tier (check the id)\n"
