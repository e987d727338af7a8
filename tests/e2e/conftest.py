"""Fixtures: one livekit-server for the session (inside the private network namespace), workers, participants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from livekit import rtc

from agent.settings import AgentSettings, LiveKitSettings, WorkerSettings
from appliance.chatclient import ChatClient
from harness.livekit import LiveKitServer, PrivateNetwork
from harness.processes import WorkerProcess
from harness.servers import PostgresServer, RedisServer, free_port
from tests.conftest import fresh_database, make_settings


@pytest.fixture(autouse=True)
def _in_private_network(private_network: PrivateNetwork | None) -> None:
    if private_network is None:
        pytest.skip("WebRTC over loopback needs the private network namespace, which needs root (CAP_SYS_ADMIN)")


@pytest.fixture(scope="session")
def livekit_server(private_network: PrivateNetwork) -> Iterator[LiveKitServer]:
    # Debug level logs every ICE candidate signalled, which the tests check.
    server = LiveKitServer(log_level="debug").start()
    yield server
    server.close()


def worker_settings(base: AgentSettings, livekit: LiveKitServer, **worker: object) -> AgentSettings:
    return base.model_copy(
        update={
            "livekit": LiveKitSettings(url=livekit.url, api_key=livekit.api_key, api_secret=livekit.api_secret),
            "worker": WorkerSettings(
                **{
                    "health_port": free_port(),
                    "status_port": free_port(),
                    "num_idle_processes": 1,
                    "departure_timeout_s": 3,
                    "reconcile_every_s": 1,
                    "orphan_after_s": 2,
                    "drain_timeout_s": 20,
                    **worker,
                }
            ),
        }
    )


@pytest.fixture
def e2e_settings(
    livekit_server: LiveKitServer, pg: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> AgentSettings:
    return worker_settings(make_settings(redis_server, pg, fresh_database(pg), tmp_path), livekit_server)


@pytest.fixture
def worker(e2e_settings: AgentSettings, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(e2e_settings, tmp_path).start()
    yield process
    if process.proc is not None and process.proc.poll() is None:
        assert process.terminate() == 0, process.output()[-3000:]


def client_options(server: LiveKitServer) -> rtc.RoomOptions:
    stun = rtc.IceServer(urls=[f"stun:{server.stun_server}"])
    return rtc.RoomOptions(rtc_config=rtc.RtcConfiguration(ice_servers=[stun]), connect_timeout=10)


@pytest.fixture
async def join(livekit_server: LiveKitServer) -> AsyncIterator[Callable[[str, str], Awaitable[ChatClient]]]:
    clients: list[ChatClient] = []

    async def joiner(room: str, identity: str) -> ChatClient:
        client = ChatClient(livekit_server.url, livekit_server.token(identity, room), client_options(livekit_server))
        clients.append(await client.connect())
        return client

    yield joiner
    await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
