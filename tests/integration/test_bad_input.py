"""Refused input writes nothing in any tier; hostile ids stay inside their keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.settings import AgentSettings
from agent.store.records import InvalidMessage
from agent.store.store import ConversationStore
from harness.inspect import backlog, stored_ids
from harness.processes import FlusherProcess
from harness.servers import RedisServer, wait_until

HOSTILE_IDS = [
    "*",
    "a:b:*",
    "{slot}",
    "../../../etc/passwd",
    "conv\\x00",
    "x" * 255,
    "🎉 ünïcode ☃",
    "' OR 1=1 --",
]


async def test_refused_append_writes_nothing(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer
) -> None:
    conv = await store.open("strict", conversation_id="strict")
    client = redis_server.client()
    for content in ("nul\x00", "surrogate \udc80", "x" * (settings.store.max_content_bytes + 1)):
        with pytest.raises(InvalidMessage, match=r"^content: "):
            await conv.append("user", "u", content)
    with pytest.raises(InvalidMessage, match=r"^role: "):
        await conv.append("robot", "u", "hi")
    with pytest.raises(InvalidMessage, match=r"^metadata: "):
        await conv.append("user", "u", "hi", ["list"])  # type: ignore[arg-type]
    assert backlog(client, settings) == 0
    assert (
        not client.exists(store.redis.keys.conversation("strict"))
        or (await store.redis.cached("strict")).messages == []
    )
    assert list(conv.window) == []
    assert stored_ids(settings, "strict") == []
    assert not (settings.store.spool_dir.exists() and any(settings.store.spool_dir.iterdir()))


@pytest.mark.parametrize("bad", ["", "x" * 256, "line\nbreak", "tab\there"])
async def test_bad_room_or_conversation_id_is_refused(store: ConversationStore, bad: str) -> None:
    with pytest.raises(InvalidMessage, match=r"^room: "):
        await store.open(bad)
    with pytest.raises(InvalidMessage, match=r"^conversation_id: "):
        await store.open("fine", conversation_id=bad)


async def test_hostile_ids_stay_inside_their_keys(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    sent = {}
    for cid in HOSTILE_IDS:
        conv = await store.open(cid, conversation_id=cid)
        sent[cid] = (await conv.append("user", cid, f"content of {cid}")).id
    prefix = re.escape(settings.store.key_prefix)
    shape = re.compile(rf"^{prefix}(wal|conv:[0-9a-f]{{32}})$")
    ours = [k.decode() for k in client.scan_iter(match=f"{settings.store.key_prefix}*")]
    assert all(shape.match(k) for k in ours), ours  # no id text reached a key name
    assert len([k for k in ours if ":conv:" in k]) == len(HOSTILE_IDS)  # one list each, nothing shared
    flusher = FlusherProcess(settings, tmp_path).start()
    wait_until(lambda: backlog(client, settings) == 0, 20, "the stream drained")
    assert flusher.terminate() == 0
    for cid in HOSTILE_IDS:
        assert stored_ids(settings, cid) == [sent[cid]]
        resumed = await store.open("elsewhere", conversation_id=cid)
        assert [(m.content, m.participant) for m in resumed.window] == [(f"content of {cid}", cid)]
