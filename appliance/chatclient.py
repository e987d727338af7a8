"""A text participant: joins a room, sends lines on ``lk.chat``, waits for each to be acknowledged (stored), and
collects the agent's replies from ``lk.transcription``. Used by ``appliance chat``, the tests and the benchmarks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from livekit import rtc

from agent.topics import ACK_TOPIC, CHAT_TOPIC, REPLY_TOPIC, STATE_TOPIC


class Refused(Exception):
    """The agent did not store a line (its reason names the problem, e.g. "content: contains NUL ..."); the
    agent does not answer it."""


class ChatClient:
    def __init__(self, url: str, token: str, options: rtc.RoomOptions | None = None) -> None:
        self.url = url
        self.token = token
        self.options = options or rtc.RoomOptions()
        self.room = rtc.Room()
        self.replies: asyncio.Queue[tuple[str, str]] = asyncio.Queue()  # (sender identity, text)
        self.acked: dict[str, dict[str, str]] = {}  # stream id -> its ack: {"message_id"} or {"error"}
        self._acks: dict[str, asyncio.Future[dict[str, str]]] = {}
        self.told: list[dict[str, str]] = []  # what the appliance told the room (STATE_TOPIC), oldest first
        self.on_told: Callable[[dict[str, str]], None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def connect(self) -> ChatClient:
        self.room.register_text_stream_handler(REPLY_TOPIC, self._on_reply)
        self.room.register_text_stream_handler(ACK_TOPIC, self._on_ack)
        self.room.on("data_received", self._on_data)
        await self.room.connect(self.url, self.token, self.options)
        return self

    @property
    def identity(self) -> str:
        return self.room.local_participant.identity

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_reply(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            await self.replies.put((sender, await reader.read_all()))

        self._spawn(read())

    def _on_ack(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            ack = json.loads(await reader.read_all())
            self.acked[ack["stream_id"]] = ack
            waiter = self._acks.pop(ack["stream_id"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(ack)

        self._spawn(read())

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic != STATE_TOPIC or packet.participant is not None:  # only the server's word counts
            return
        told = json.loads(packet.data)
        self.told.append(told)
        if self.on_told is not None:
            self.on_told(told)

    async def send(self, text: str, *, ack_seconds: float = 20) -> str:
        """Send one line; returns the stored message's id once the agent has acknowledged it, or raises Refused."""
        loop = asyncio.get_running_loop()
        info = await self.room.local_participant.send_text(text, topic=CHAT_TOPIC)
        ack = self.acked.get(info.stream_id)
        if ack is None:
            ack = await asyncio.wait_for(self._acks.setdefault(info.stream_id, loop.create_future()), ack_seconds)
        if "error" in ack:
            raise Refused(ack["error"])
        return ack["message_id"]

    def agent_present(self) -> bool:
        """Whether an agent was in the room when we joined: it greeted those before us, not us."""
        agent = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        return any(p.kind == agent for p in self.room.remote_participants.values())

    async def greeting(self, seconds: float = 30) -> str:
        """Wait for the agent's greeting: it is said once the agent listens, so lines sent after it are heard
        (a line sent into a room before the agent is there reaches nobody)."""
        return await self.reply(seconds)

    async def reply(self, seconds: float = 20) -> str:
        """The next complete reply from the agent."""
        _sender, text = await asyncio.wait_for(self.replies.get(), seconds)
        return text

    async def reply_containing(self, needle: str, seconds: float = 20) -> str:
        """Skip replies (greetings, answers to others) until one contains ``needle``."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            left = deadline - asyncio.get_running_loop().time()
            text = await self.reply(max(left, 0.01))
            if needle in text:
                return text

    async def aclose(self) -> None:
        await self.room.disconnect()
        for task in list(self._tasks):
            task.cancel()
