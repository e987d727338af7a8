"""The load: rooms arriving at a steady rate, each with two text participants taking turns, all of them ChatClients
in this one process; then room processes killed one at a time while their participants wait for the agent.

The clients share the machine with what they measure. Their cost is reported ("silent rooms: clients CPU"): with
100 Rooms in one process the rtc runtime forwards ~28,000 debug log records a second to Python (libwebrtc's
port allocator listing networks), which parses and drops them (livekit/rtc/_ffi_client.py, ffi_event_callback):
about 0.8 of a core, whatever the rooms do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from livekit import rtc
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc._proto import ffi_pb2 as proto_ffi

from appliance.chatclient import ChatClient
from harness.livekit import LiveKitServer

GREETING_TIMEOUT_S = 30.0
ACK_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 30.0
RESUME_TIMEOUT_S = 20.0
KILL_GAP_S = 1.0  # between two kills: independent failures, not a burst
RESUMED = "I'm back"  # in worker.resume_greeting
MAX_ERRORS = 5  # error descriptions kept per configuration; the rest are only counted


class RoomNotKillable(Exception):
    """The worker does not show exactly one process of its own serving the room."""


@dataclass(frozen=True)
class Plan:
    messages: int  # lines each participant sends
    kills: int  # room processes killed, one at a time, per configuration
    arrival_per_s: float  # new rooms per second
    think_s: float  # pause before each line, as a person would take


FULL = Plan(messages=3, kills=5, arrival_per_s=2.0, think_s=2.0)
QUICK = Plan(messages=2, kills=3, arrival_per_s=2.0, think_s=1.0)


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


def own_events_only(client: ChatClient) -> None:
    """Deliver to the client's Room only its own room's events, so the load generator scales with its rooms.

    The rtc SDK hands every FFI event to every Room of the process (FfiQueue.put: one call_soon_threadsafe per
    subscriber, "we don't expect a lot of subscribers"; each Room's listen task then discards other rooms'
    events): with 100 Rooms each text-stream chunk wakes 100 tasks. Measured at 50 rooms: reply p50 1.6 s without
    this, 0.3 s with it. Once connected (the handle known), the Room's subscription drops other rooms' room
    events, exactly those its listen task would ignore.
    """
    room = client.room
    if room._ffi_handle is None:
        return
    handle, own = room._ffi_handle.handle, room._ffi_queue
    queue = FfiClient.instance.queue
    with queue._lock:
        for i, (subscribed, loop, keep) in enumerate(queue._subscribers):
            if subscribed is own:
                queue._subscribers[i] = (subscribed, loop, room_filter(handle, keep))


def room_filter(handle: int, keep: Callable[[proto_ffi.FfiEvent], bool] | None) -> Callable[[proto_ffi.FfiEvent], bool]:
    def accept(event: proto_ffi.FfiEvent) -> bool:
        if event.WhichOneof("message") == "room_event" and event.room_event.room_handle != handle:
            return False
        return keep is None or keep(event)

    return accept


async def connect(client: ChatClient) -> None:
    await client.connect()
    own_events_only(client)


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
            await connect(room.alice)
            await room.alice.greeting(GREETING_TIMEOUT_S)
        finally:
            await room.alice.aclose()

    async def _room(self, name: str) -> Room:
        room = Room(name, self.client(name, "alice"))
        room.greeted = await self._greeted(room)
        if room.greeted:
            room.bob = self.client(name, "bob")
            try:
                await connect(room.bob)
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
            await connect(room.alice)
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
        resume greeting. A room ``kill`` refuses (RoomNotKillable) is counted as lost, with the reason."""
        for room in rooms:
            drain(room.alice)
            try:
                room.stamps["killed"] = await kill(room.name)
            except RoomNotKillable as exc:
                self.samples.fail("resume", room.name, exc)
                continue
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
