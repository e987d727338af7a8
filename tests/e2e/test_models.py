"""Models from settings: an OpenAI-compatible provider, against a local fake server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis
from livekit import rtc

from agent.settings import AgentSettings, ModelSettings
from agent.store.keys import Keys
from appliance.chatclient import ChatClient
from harness.fake_openai import FakeOpenAI
from harness.processes import WorkerProcess
from harness.servers import wait_until

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


async def test_speech_in_is_transcribed_answered_and_stored_under_its_speaker(
    e2e_settings: AgentSettings, join: Join, tmp_path: Path
) -> None:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng (a Debian package, which scripts/test installs) makes the speech this test sends"
    wav = tmp_path / "speech.wav"
    await asyncio.to_thread(subprocess.run, [espeak, "-w", str(wav), "hello agent, can you hear me"], check=True)
    fake = await FakeOpenAI(api_key="sk-ears").start()
    models = ModelSettings(stt="openai", vad="silero", openai_base_url=fake.base_url, openai_api_key=fake.api_key)
    worker = WorkerProcess(e2e_settings.model_copy(update={"models": models}), tmp_path).start()
    try:
        client = await join("spoken", "alice")
        await client.greeting()
        await speak(client.room, wav)
        answer = await client.reply_containing("I have heard", 30)  # (livekit also echoes the user's transcript)
        assert answer.endswith(
            f"I have heard alice. This conversation holds 2 messages. Last: alice: {fake.transcript}"
        )
        assert fake.heard_audio and fake.heard_audio[0] > 10_000  # a real stretch of audio was sent to the STT
        wait_until(lambda: spoken_turns(e2e_settings) == [("alice", fake.transcript)], 10, "the turn stored")
    finally:
        assert worker.terminate() == 0
        await fake.aclose()


async def speak(room: rtc.Room, wav: Path) -> None:
    """Publish a WAV file as a microphone track, then a second of silence so the VAD ends the turn."""
    with wave.open(str(wav)) as f:
        rate, pcm = f.getframerate(), f.readframes(f.getnframes())
    source = rtc.AudioSource(rate, 1)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await room.local_participant.publish_track(track, options)
    step = rate // 100  # 10 ms frames
    samples = pcm + b"\0\0" * rate
    for start in range(0, len(samples) // 2 - step, step):
        chunk = samples[start * 2 : (start + step) * 2]
        await source.capture_frame(rtc.AudioFrame(chunk, rate, 1, step))


def spoken_turns(settings: AgentSettings) -> list[tuple[str, str]]:
    """(participant, content) of the user messages in the Redis stream (no flusher runs here)."""
    r = settings.redis
    password = r.password.get_secret_value() if r.password else None
    with redis.Redis(unix_socket_path=str(r.unix_socket), password=password) as client:
        entries: Any = client.xrange(Keys(settings.store.key_prefix).stream)
    found = [orjson.loads(fields[b"v"]) for _id, fields in entries if fields.get(b"k") == b"m"]
    return [(m["p"], m["t"]) for m in found if m["r"] == "user"]
