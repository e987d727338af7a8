"""A local OpenAI-compatible server (streaming chat completions) that records what it was asked."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from harness.servers import free_port


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
        self.transcript = "this came in as speech"
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
        last = next((m for m in reversed(body["messages"]) if m["role"] == "user"), {"content": ""})
        content = last["content"] if isinstance(last["content"], str) else json.dumps(last["content"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta, finish in (
            ({"role": "assistant", "content": f"fake-openai ({body['model']}) heard: "}, None),
            ({"content": content}, None),
            ({}, "stop"),
        ):
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
        self.heard_audio.append(len(audio.file.read()))
        return web.json_response({"text": self.transcript})
