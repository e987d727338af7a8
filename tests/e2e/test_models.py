"""Models from settings: an OpenAI-compatible provider, against a local fake server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.settings import AgentSettings, ModelSettings
from appliance.chatclient import ChatClient
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.processes import WorkerProcess

Join = Callable[[str, str], Awaitable[ChatClient]]


async def test_openai_compatible_provider(e2e_settings: AgentSettings, join: Join, tmp_path: Path) -> None:
    fake = await FakeOpenAI(api_key="sk-test-not-a-real-key").start()
    models = ModelSettings(
        llm="openai", openai_base_url=fake.base_url, openai_model="tiny-1", openai_api_key=fake.api_key
    )
    worker = WorkerProcess(e2e_settings.model_copy(update={"models": models}), tmp_path).start()
    try:
        alice = await join("provider", "alice")
        await alice.greeting()
        await alice.send("what is two and two?")
        answer = await alice.reply_containing("fake-openai")
        assert answer == "fake-openai (tiny-1) heard: alice: what is two and two?"  # the speaker's name reaches it
        assert fake.unauthorized == 0
        sent = fake.requests[-1]["messages"]
        assert sent[0]["role"] == "system" and "several people" in sent[0]["content"]  # the sample's instructions
        assert "sk-test-not-a-real-key" not in worker.output()  # the key is never logged
    finally:
        assert worker.terminate() == 0
        await fake.aclose()
