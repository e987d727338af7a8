"""The load: rooms arriving at a steady rate, each with two text participants taking turns, all of them ChatClients
in this one process; then room processes killed one at a time while their participants wait for the agent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from livekit import rtc

from appliance.chatclient import ChatClient
from tests.harness.livekit import LiveKitServer

GREETING_TIMEOUT_S = 30.0
ACK_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 30.0
RESUME_TIMEOUT_S = 30.0
KILL_GAP_S = 1.0  # between two kills: independent failures, not a burst
RESUMED = "I'm back"  # in worker.resume_greeting
MAX_ERRORS = 5  # error descriptions kept per configuration; the rest are only counted


@dataclass(frozen=True)
class Plan:
    messages: int  # lines each participant sends
    kills: int  # room processes killed, one at a time, per configuration
    arrival_per_s: float  # new rooms per second
    think_s: float  # pause before each line, as a person would take


FULL = Plan(messages=5, kills=8, arrival_per_s=2.0, think_s=1.0)
QUICK = Plan(messages=2, kills=3, arrival_per_s=2.0, think_s=0.5)


@dataclass
class Samples:
    """Seconds per event; ``failed`` counts those that never completed, by figure."""

    connect: list[float] = field(default_factory=list)
    agent_joined: list[float] = field(default_factory=list)
    greeting: list[float] = field(default_factory=list)
    ack: list[float] = field(default_factory=list)
    reply: list[float] = field(default_factory=list)
    resume: list[float] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def fail(self, figure: str, room: str, exc: BaseException) -> None:
        self.failed[figure] += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"{figure} in {room}: {type(exc).__name__} {exc}".strip())


@dataclass
class Room:
    name: str
    alice: ChatClient
    bob: ChatClient | None = None
    greeted: bool = False
    # Wall-clock stamps (unix seconds, like livekit's dispatch stamps): join, joined, agent, greeting, killed, back.
    stamps: dict[str, float] = field(default_factory=dict)


def client_options(server: LiveKitServer) -> rtc.RoomOptions:
    """ICE servers: only the loopback STUN port nothing listens on (never LiveKit's public defaults)."""
    stun = rtc.IceServer(urls=[f"stun:{server.stun_server}"])
    return rtc.RoomOptions(rtc_config=rtc.RtcConfiguration(ice_servers=[stun]), connect_timeout=10)


def watch_agent(room: Room) -> None:
    """Stamp when an agent joins the first participant's room (watch it before connecting)."""

    def on_connected(participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            room.stamps.setdefault("agent", time.time())

    room.alice.room.on("participant_connected", on_connected)


def has_agent(client: ChatClient) -> bool:
    agent = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    return any(p.kind == agent for p in client.room.remote_participants.values())


def drain(client: ChatClient) -> None:
    while not client.replies.empty():
        client.replies.get_nowait()


class Load:
    """Every client of one configuration's run, and the samples they took."""

    def __init__(self, server: LiveKitServer, plan: Plan) -> None:
        self.server = server
        self.plan = plan
        self.samples = Samples()
        self.clients: list[ChatClient] = []

    def client(self, room: str, identity: str) -> ChatClient:
        found = ChatClient(self.server.url, self.server.token(identity, room), client_options(self.server))
        self.clients.append(found)
        return found

    async def run_rooms(self, names: list[str]) -> list[Room]:
        """Open the rooms at the plan's arrival rate; each converses once greeted. Returns when all are done."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i, name in enumerate(names):
            delay = start + i / self.plan.arrival_per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._room(name), name=f"room {name}"))
        return list(await asyncio.gather(*tasks))

    async def warm_up(self, name: str) -> None:
        """One room joined, greeted and left, not counted: a worker's and a server's first room pay one-time
        costs that are not what a room costs."""
        room = Room(name, self.client(name, "alice"))
        try:
            await room.alice.connect()
            await room.alice.greeting(GREETING_TIMEOUT_S)
        finally:
            await room.alice.aclose()

    async def _room(self, name: str) -> Room:
        room = Room(name, self.client(name, "alice"))
        room.greeted = await self._greeted(room)
        if room.greeted:
            room.bob = self.client(name, "bob")
            try:
                await room.bob.connect()
            except Exception as exc:
                self.samples.fail("connect", name, exc)
                return room
            await self._converse(room)
        return room

    async def _greeted(self, room: Room) -> bool:
        """The first participant joins; times the join, the agent's arrival and the greeting from the join."""
        watch_agent(room)
        stamps = room.stamps
        stamps["join"] = time.time()
        try:
            await room.alice.connect()
        except Exception as exc:
            self.samples.fail("connect", room.name, exc)
            self.samples.fail("greeting", room.name, exc)
            return False
        stamps["joined"] = time.time()
        self.samples.connect.append(stamps["joined"] - stamps["join"])
        if has_agent(room.alice):
            stamps.setdefault("agent", stamps["joined"])  # in the room before the join completed: no event
        try:
            await room.alice.greeting(GREETING_TIMEOUT_S)
        except TimeoutError as exc:
            self.samples.fail("greeting", room.name, exc)
            return False
        stamps["greeting"] = time.time()
        self.samples.greeting.append(stamps["greeting"] - stamps["join"])
        if "agent" in stamps:
            self.samples.agent_joined.append(stamps["agent"] - stamps["join"])
        return True

    async def _converse(self, room: Room) -> None:
        """The two participants take turns: each line waits for its reply before the other speaks."""
        assert room.bob is not None
        for i in range(self.plan.messages):
            for client in (room.alice, room.bob):
                await asyncio.sleep(self.plan.think_s)
                if not await self._turn(room.name, client, f"turn {i:03d}"):
                    return

    async def _turn(self, room: str, client: ChatClient, text: str) -> bool:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await client.send(text, ack_seconds=ACK_TIMEOUT_S)
        except Exception as exc:
            self.samples.fail("ack", room, exc)
            self.samples.fail("reply", room, exc)
            return False
        self.samples.ack.append(loop.time() - t0)
        try:
            await client.reply_containing(f"{client.identity}: {text}", REPLY_TIMEOUT_S)
        except TimeoutError as exc:
            self.samples.fail("reply", room, exc)
            return False
        self.samples.reply.append(loop.time() - t0)
        return True

    async def kill_and_resume(self, rooms: list[Room], kill: Callable[[str], Awaitable[float]]) -> None:
        """For each room, one at a time: ``kill`` its process (returns when, unix seconds), then wait for the
        resume greeting."""
        for room in rooms:
            drain(room.alice)
            room.stamps["killed"] = await kill(room.name)
            try:
                await room.alice.reply_containing(RESUMED, RESUME_TIMEOUT_S)
            except TimeoutError as exc:
                self.samples.fail("resume", room.name, exc)
            else:
                room.stamps["back"] = time.time()
                self.samples.resume.append(room.stamps["back"] - room.stamps["killed"])
            await asyncio.sleep(KILL_GAP_S)

    async def aclose(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.aclose() for c in self.clients), return_exceptions=True), timeout=60
            )


def kill_sample(rooms: list[Room], count: int) -> list[Room]:
    """``count`` greeted rooms spread over the arrival order."""
    greeted = [r for r in rooms if r.greeted]
    if not greeted or count <= 0:
        return []
    step = max(1, len(greeted) // count)
    return greeted[::step][:count]
