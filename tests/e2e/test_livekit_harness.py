"""The private livekit-server works, and WebRTC clients reach it with every candidate and socket on loopback."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import psutil
import pytest
from livekit import rtc
from livekit.protocol.room import CreateRoomRequest, ListRoomsRequest

from agent.topics import CHAT_TOPIC
from harness import livekit as harness
from harness.livekit import LiveKitServer, PrivateNetwork, is_loopback, logged_candidates

SAMPLE_RATE = 48000
FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms, what libwebrtc's audio pipeline works in

log = logging.getLogger(__name__)


def room_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def room_options(server: LiveKitServer) -> rtc.RoomOptions:
    """Only the server's loopback STUN port as ICE server (an empty list would mean "whatever the SFU says")."""
    stun = rtc.IceServer(urls=[f"stun:{server.stun_server}"])
    return rtc.RoomOptions(rtc_config=rtc.RtcConfiguration(ice_servers=[stun]), connect_timeout=10)


def candidates(stats: rtc.RtcStats) -> list[tuple[str, str, int, str]]:
    """(local|remote, address, port, protocol) of every ICE candidate either peer connection knows."""
    found = []
    for report in [*stats.publisher_stats, *stats.subscriber_stats]:
        kind = report.WhichOneof("stats")
        if kind == "local_candidate":
            c = report.local_candidate.candidate
            found.append(("local", c.address, c.port, c.protocol))
        elif kind == "remote_candidate":
            c = report.remote_candidate.candidate
            found.append(("remote", c.address, c.port, c.protocol))
    return found


def audio_packets_received(stats: rtc.RtcStats) -> int:
    return sum(
        report.inbound_rtp.received.packets_received
        for report in [*stats.publisher_stats, *stats.subscriber_stats]
        if report.WhichOneof("stats") == "inbound_rtp"
    )


def inet_sockets(pids: Iterable[int]) -> list[tuple[int, str, str]]:
    """(pid, local address, remote address or "") of every TCP/UDP socket of these processes."""
    found = []
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            found.append((pid, conn.laddr.ip if conn.laddr else "", conn.raddr.ip if conn.raddr else ""))
    return found


def tone(frame_index: int) -> rtc.AudioFrame:
    """10 ms of a 440 Hz sine, so the encoder has something to send (silence may go out as DTX only)."""
    frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME_SAMPLES)
    samples = frame.data
    start = frame_index * FRAME_SAMPLES
    for i in range(FRAME_SAMPLES):
        samples[i] = int(8000 * math.sin(2 * math.pi * 440 * (start + i) / SAMPLE_RATE))
    return frame


def test_binary_finder_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    not_executable = tmp_path / "livekit-server"
    not_executable.write_text("")
    monkeypatch.setenv("LIVEKIT_SERVER_BIN", str(not_executable))
    with pytest.raises(RuntimeError, match=r"LIVEKIT_SERVER_BIN=.*scripts/build-livekit-server"):
        harness.binary()
    monkeypatch.delenv("LIVEKIT_SERVER_BIN")
    assert harness.is_livekit_server(str(harness.binary()))


def test_server_listens_on_loopback_only(livekit_server: LiveKitServer) -> None:
    assert livekit_server.ready_after_s is not None
    log.info("livekit-server answered HTTP %.3f s after exec", livekit_server.ready_after_s)
    assert livekit_server.ready_after_s < 10
    assert livekit_server.pid is not None
    sockets = inet_sockets([livekit_server.pid])
    ports = {conn.laddr.port for conn in psutil.Process(livekit_server.pid).net_connections(kind="inet")}
    assert {livekit_server.port, livekit_server.udp_port} <= ports
    assert [s for s in sockets if not is_loopback(s[1]) or (s[2] and not is_loopback(s[2]))] == []


async def test_api_creates_and_lists_rooms(livekit_server: LiveKitServer) -> None:
    name = room_name()
    async with livekit_server.api() as lk:
        created = await lk.room.create_room(CreateRoomRequest(name=name, empty_timeout=5))
        rooms = await lk.room.list_rooms(ListRoomsRequest(names=[name]))
    assert created.name == name
    assert [r.name for r in rooms.rooms] == [name]


async def test_chat_and_audio_over_loopback(livekit_server: LiveKitServer, private_network: PrivateNetwork) -> None:
    name = room_name()
    alice, bob = rtc.Room(), rtc.Room()
    received: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
    subscribed: asyncio.Future[rtc.RemoteAudioTrack] = asyncio.get_running_loop().create_future()
    readers: set[asyncio.Task[None]] = set()

    def on_text(reader: rtc.TextStreamReader, identity: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            if not received.done():
                received.set_result((identity, text))

        task = asyncio.create_task(read())
        readers.add(task)
        task.add_done_callback(readers.discard)

    def on_subscribed(track: rtc.Track, _pub: rtc.RemoteTrackPublication, _who: rtc.RemoteParticipant) -> None:
        if isinstance(track, rtc.RemoteAudioTrack) and not subscribed.done():
            subscribed.set_result(track)

    bob.register_text_stream_handler(CHAT_TOPIC, on_text)
    bob.on("track_subscribed", on_subscribed)

    connect_s = {}
    for who, room in (("alice", alice), ("bob", bob)):
        started = time.monotonic()
        await room.connect(livekit_server.url, livekit_server.token(who, name), room_options(livekit_server))
        connect_s[who] = time.monotonic() - started
    log.info("connect took %s", {k: f"{v:.3f} s" for k, v in connect_s.items()})
    assert max(connect_s.values()) < 10

    source = rtc.AudioSource(SAMPLE_RATE, 1)
    stream: rtc.AudioStream | None = None
    try:
        track = rtc.LocalAudioTrack.create_audio_track("tone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await alice.local_participant.publish_track(track, options)

        async def speak() -> None:
            for i in range(3000):  # 30 s at most; cancelled once bob has heard enough
                await source.capture_frame(tone(i))

        speaker = asyncio.create_task(speak())
        try:
            remote = await asyncio.wait_for(subscribed, 20)
            stream = rtc.AudioStream(remote, sample_rate=SAMPLE_RATE, num_channels=1)
            heard = await asyncio.wait_for(anext(aiter(stream)), 20)
            assert heard.frame.sample_rate == SAMPLE_RATE

            await alice.local_participant.send_text("hello bob", topic=CHAT_TOPIC)
            assert await asyncio.wait_for(received, 20) == ("alice", "hello bob")

            packets = 0
            for _ in range(100):  # RTP stats refresh about once a second
                packets = audio_packets_received(await bob.get_rtc_stats())
                if packets > 0:
                    break
                await asyncio.sleep(0.1)
            assert packets > 0, "bob subscribed but received no RTP"
        finally:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)

        seen = [c for room in (alice, bob) for c in candidates(await room.get_rtc_stats())]
        assert {side for side, *_ in seen} == {"local", "remote"}
        assert [c for c in seen if not is_loopback(c[1])] == []
        # The server offers exactly its node_ip and UDP port.
        assert {(a, p, proto) for side, a, p, proto in seen if side == "remote"} == {
            ("127.0.0.1", livekit_server.udp_port, "udp")
        }
        # The server's side of the signalling agrees: it sent and received nothing else.
        signalled = logged_candidates(livekit_server)
        assert {address for address, *_ in signalled} == {"127.0.0.1", PrivateNetwork.CLIENT_ADDRESS}
        assert livekit_server.pid is not None
        sockets = inet_sockets([psutil.Process().pid, livekit_server.pid])
        assert any(local == PrivateNetwork.CLIENT_ADDRESS for _, local, _ in sockets), "no ICE socket seen"
        assert [s for s in sockets if not is_loopback(s[1]) or (s[2] and not is_loopback(s[2]))] == []
        assert set(private_network.addresses()) <= {"127.0.0.1", "::1", PrivateNetwork.CLIENT_ADDRESS}
    finally:
        if stream is not None:
            await stream.aclose()
        await source.aclose()
        await alice.disconnect()
        await bob.disconnect()


def test_stop_and_kill_leave_no_process(private_network: PrivateNetwork) -> None:
    stopped = LiveKitServer().start()
    assert stopped.pid is not None
    stopped.close()
    assert not psutil.pid_exists(stopped.pid)
    assert not stopped.dir.exists()

    killed = LiveKitServer().start()
    assert killed.pid is not None
    killed.kill()
    assert not psutil.pid_exists(killed.pid)
    killed.close()


async def test_stop_does_not_wait_for_participants(private_network: PrivateNetwork) -> None:
    """A graceful stop waits for every participant to leave; stop() forces it after its grace period."""
    server = LiveKitServer().start()
    assert server.pid is not None
    room = rtc.Room()
    try:
        await room.connect(server.url, server.token("stayer", room_name()), room_options(server))
        started = time.monotonic()
        await asyncio.to_thread(server.stop, grace=1)
        assert time.monotonic() - started < 10
        assert not psutil.pid_exists(server.pid)
    finally:
        await room.disconnect()
        server.close()
