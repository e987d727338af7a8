"""A local OpenAI-compatible server (streaming chat completions) that records what it was asked.

Taught a ``tool_script``, it answers a user line the script recognises with a call of the tool the script names
(when the request offers that tool), and a tool's result with a line quoting it: an agent's function tools run
end to end, offline.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import io
import json
import math
import re
import threading
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from harness.servers import free_port


def order_questions(line: str) -> tuple[str, dict[str, Any]] | None:
    """A tool_script for examples/order-desk: "alice: where is order A-1001?" calls lookup_order for alice."""
    found = re.match(r"(\w+): .*order ([A-Z]-\d+)", line)
    return ("lookup_order", {"order_id": found[2], "customer": found[1]}) if found else None


@dataclass(frozen=True)
class Heard:
    """An audio file sent to be transcribed: how long it lasts and how loud it is (RMS of 16-bit samples)."""

    seconds: float
    rms: float

    @classmethod
    def of(cls, data: bytes) -> Heard:
        with wave.open(io.BytesIO(data)) as wav:
            frames = wav.readframes(wav.getnframes())
            seconds = wav.getnframes() / wav.getframerate()
        samples = array.array("h", frames)
        rms = math.sqrt(sum(v * v for v in samples) / len(samples)) if samples else 0.0
        return cls(seconds, rms)


class FakeOpenAI:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self.unauthorized = 0
        app = web.Application()
        app.add_routes(
            [
                web.post("/v1/chat/completions", self.completions),
                web.post("/v1/audio/speech", self.speech),
                web.post("/v1/audio/transcriptions", self.transcriptions),
                web.get("/v1/models", self.models),
            ]
        )
        self.spoken: list[str] = []
        self.heard_audio: list[int] = []  # bytes of each audio file it was asked to transcribe
        self.heard: list[Heard] = []  # and what each of them held
        self.transcript = "this came in as speech"
        # A user line (as the LLM sees it, "speaker: text") to (tool name, arguments), or None for a plain answer.
        self.tool_script: Callable[[str], tuple[str, dict[str, Any]] | None] | None = None
        self._runner = web.AppRunner(app, access_log=None)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def aclose(self) -> None:
        await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.unauthorized += 1
            return False
        return True

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        self.requests.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta, finish in self._answer(body):
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _answer(self, body: dict[str, Any]) -> list[tuple[dict[str, Any], str | None]]:
        """The streamed deltas: a tool call the script asks for, a line quoting a tool's result, or an echo."""
        messages = body["messages"]
        if messages[-1]["role"] == "tool":
            said = f"fake-openai ({body['model']}) tool {messages[-1]['tool_call_id']} said: {messages[-1]['content']}"
            return [({"role": "assistant", "content": said}, None), ({}, "stop")]
        last = next((m for m in reversed(messages) if m["role"] == "user"), {"content": ""})
        content = last["content"] if isinstance(last["content"], str) else json.dumps(last["content"])
        offered = {t["function"]["name"] for t in body.get("tools", [])}
        scripted = self.tool_script(content) if self.tool_script else None
        if scripted and scripted[0] in offered:
            name, arguments = scripted
            call = {"index": 0, "id": f"call_{len(self.requests)}", "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)}}  # fmt: skip
            return [({"role": "assistant", "tool_calls": [call]}, None), ({}, "tool_calls")]
        return [
            ({"role": "assistant", "content": f"fake-openai ({body['model']}) heard: "}, None),
            ({"content": content}, None),
            ({}, "stop"),
        ]

    async def speech(self, request: web.Request) -> web.Response:
        """Half a second of a 440 Hz tone per request, as raw 16-bit 24 kHz PCM."""
        if not self._authorized(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        self.spoken.append(body["input"])
        rate = 24_000
        samples = (int(12_000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(rate // 2))
        pcm = b"".join(s.to_bytes(2, "little", signed=True) for s in samples)
        return web.Response(body=pcm, content_type="audio/pcm")

    async def transcriptions(self, request: web.Request) -> web.Response:
        """Whatever the audio, the same transcript: the test checks the path, not the recognition."""
        if not self._authorized(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        form = await request.post()
        audio: Any = form["file"]
        data = audio.file.read()
        self.heard_audio.append(len(data))
        self.heard.append(Heard.of(data))
        return web.json_response({"text": self.transcript})


@contextlib.contextmanager
def in_thread(api_key: str) -> Iterator[FakeOpenAI]:
    """The server on an event loop of its own, for tests that block (the CLI run as a subprocess) while it serves."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
    thread.start()
    fake = asyncio.run_coroutine_threadsafe(FakeOpenAI(api_key).start(), loop).result(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
