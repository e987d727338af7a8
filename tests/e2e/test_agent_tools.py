"""An operator's agent with a function tool (examples/order-desk), its calls stored and restored after a crash.

The LLM is the local fake OpenAI server, scripted to call the tool when a line asks about an order.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from agent.settings import AgentSettings, ModelSettings
from agent.store.keys import Keys
from agent.store.records import Message
from appliance.chatclient import ChatClient
from harness.appliance import EXAMPLES
from harness.fake_openai import FakeOpenAI, order_questions
from harness.processes import WorkerProcess
from harness.servers import wait_until

Join = Callable[[str, str], Awaitable[ChatClient]]
ORDER_DESK = EXAMPLES / "order-desk"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI(api_key="sk-orders").start()
    server.tool_script = order_questions
    yield server
    await server.aclose()


@pytest.fixture
def order_desk(e2e_settings: AgentSettings, fake: FakeOpenAI, tmp_path: Path) -> AgentSettings:
    """The worker runs the example's factory from its directory (worker.agent_path), the LLM the fake server."""
    models = ModelSettings(
        llm="openai", openai_base_url=fake.base_url, openai_model="desk-1", openai_api_key=fake.api_key
    )
    worker = e2e_settings.worker.model_copy(update={"agent": "order_desk.agent:build", "agent_path": ORDER_DESK})
    return e2e_settings.model_copy(update={"models": models, "worker": worker})


def stored(settings: AgentSettings, room: str) -> list[Message]:
    """The room's conversation as the Redis tier holds it (no flusher runs here)."""
    r = settings.redis
    keys = Keys(settings.store.key_prefix)
    with redis.Redis(unix_socket_path=str(r.unix_socket), password=r.password.get_secret_value()) as client:  # type: ignore[union-attr]
        cid: Any = client.hget(keys.room(room), "id")
        raw: Any = client.lrange(keys.conversation(cid.decode()), 1, -1) if cid else []
    return [Message.decode(item) for item in raw]


def tools_in(request: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, call id) of each tool call and tool result an LLM request carried, in order."""
    found = []
    for message in request["messages"]:
        for call in message.get("tool_calls") or []:
            found.append(("call", call["id"]))
        if message["role"] == "tool":
            found.append(("output", message["tool_call_id"]))
    return found


async def test_a_function_tool_answers_each_speaker_and_lands_in_the_store(
    order_desk: AgentSettings, fake: FakeOpenAI, join: Join, tmp_path: Path
) -> None:
    worker = WorkerProcess(order_desk, tmp_path).start()
    try:
        alice = await join("desk", "alice")
        await alice.greeting()
        await alice.send("where is my order A-1001?")
        answer = await alice.reply_containing("said:", 30)
        assert answer.endswith("said: Order A-1001 for alice: 2 desk lamps, shipped on 2 December.")
        call = next(m for m in fake.requests[-1]["messages"] if m.get("tool_calls"))["tool_calls"][0]
        assert call["function"]["name"] == "lookup_order"
        assert json.loads(call["function"]["arguments"]) == {"order_id": "A-1001", "customer": "alice"}

        bob = await join("desk", "bob")
        await bob.send("and what about order A-1001?")
        assert "is not bob's" in await bob.reply_containing("A-1001 is not", 30)

        wait_until(lambda: len([m for m in stored(order_desk, "desk") if m.role == "tool"]) == 4, 10, "4 tool messages")
        tools = [m for m in stored(order_desk, "desk") if m.role == "tool"]
        assert [(m.participant, m.metadata["tool"]) for m in tools] == [
            ("alice", "call"), ("alice", "output"), ("bob", "call"), ("bob", "output")
        ]  # fmt: skip
        assert orjson.loads(tools[0].content) == {"order_id": "A-1001", "customer": "alice"}
        assert tools[1].content == "Order A-1001 for alice: 2 desk lamps, shipped on 2 December."
        assert tools[0].metadata["call_id"] == tools[1].metadata["call_id"]
    finally:
        assert worker.terminate() == 0
    assert "sk-orders" not in worker.output()


async def test_a_room_resumed_after_kill_9_holds_its_tool_call_and_result_once(
    order_desk: AgentSettings, fake: FakeOpenAI, join: Join, tmp_path: Path
) -> None:
    worker = WorkerProcess(order_desk, tmp_path).start()
    try:
        alice = await join("desk-crash", "alice")
        await alice.greeting()
        await alice.send("where is my order A-1001?")
        await alice.reply_containing("said:", 30)
        wait_until(lambda: len([m for m in stored(order_desk, "desk-crash") if m.role == "tool"]) == 2, 10, "stored")
        call_id = next(m for m in stored(order_desk, "desk-crash") if m.role == "tool").metadata["call_id"]
        pid = next(r["pid"] for r in worker.status()["rooms"] if r["room"] == "desk-crash")
        os.kill(pid, signal.SIGKILL)
        await alice.reply_containing("I'm back", 60)
        await alice.send("thank you")
        await alice.reply_containing("heard: alice: thank you", 30)
        assert tools_in(fake.requests[-1]) == [("call", call_id), ("output", call_id)]
    finally:
        assert worker.terminate() == 0
