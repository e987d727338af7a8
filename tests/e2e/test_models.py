"""Models from settings: an OpenAI-compatible provider, against a local fake server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from livekit import rtc

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


async def test_replies_are_spoken_when_a_tts_is_configured(
    e2e_settings: AgentSettings, join: Join, tmp_path: Path
) -> None:
    fake = await FakeOpenAI(api_key="sk-voice").start()
    models = ModelSettings(tts="openai", openai_base_url=fake.base_url, openai_api_key=fake.api_key)
    worker = WorkerProcess(e2e_settings.model_copy(update={"models": models}), tmp_path).start()
    try:
        heard = asyncio.Event()
        loud_frames = 0

        async def listen(track: rtc.Track) -> None:
            nonlocal loud_frames
            async for event in rtc.AudioStream(track):
                if max(abs(s) for s in event.frame.data) > 1000:  # the fake's tone, not silence
                    loud_frames += 1
                    if loud_frames >= 10:
                        heard.set()
                        return

        client = await join("voiced", "alice")

        def subscribed(track: rtc.Track, *_: object) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                asyncio.get_running_loop().create_task(listen(track))

        client.room.on("track_subscribed", subscribed)
        greeting = await client.greeting()  # the text still arrives on lk.transcription
        await asyncio.wait_for(heard.wait(), 30)
        assert greeting == e2e_settings.worker.greeting
        assert fake.spoken[0] == e2e_settings.worker.greeting  # spoken by the configured TTS
        assert fake.unauthorized == 0
    finally:
        assert worker.terminate() == 0
        await fake.aclose()
