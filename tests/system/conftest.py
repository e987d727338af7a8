"""Fixtures: the whole appliance, installed by `appliance install` into a temporary prefix and running."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from appliance.chatclient import ChatClient
from harness.appliance import InstalledAppliance
from harness.livekit import PrivateNetwork


@pytest.fixture(autouse=True)
def _as_root_in_private_network(private_network: PrivateNetwork | None) -> None:
    if os.geteuid() != 0 or private_network is None:
        pytest.skip("installing the appliance creates a user and runs PostgreSQL as it: needs root")


@pytest.fixture(scope="session")
def appliance() -> Iterator[InstalledAppliance]:
    """One installed, running appliance shared by the tests that only observe it or that it recovers from."""
    installed = InstalledAppliance()
    installed.write_config()
    try:
        installed.install()
        yield installed
    finally:
        installed.close()


@pytest.fixture
def new_appliance() -> Iterator[Callable[..., InstalledAppliance]]:
    """A factory of appliances of the test's own (written, not yet installed), closed after the test."""
    made: list[InstalledAppliance] = []

    def make(**options: object) -> InstalledAppliance:
        installed = InstalledAppliance(**options)  # type: ignore[arg-type]
        installed.write_config()
        made.append(installed)
        return installed

    yield make
    for installed in made:
        installed.close()


Join = Callable[[InstalledAppliance, str, str], Awaitable[ChatClient]]


@pytest.fixture
async def join() -> AsyncIterator[Join]:
    """Connects participants to an installed appliance's rooms; they leave after the test."""
    clients: list[ChatClient] = []

    async def joiner(installed: InstalledAppliance, room: str, identity: str) -> ChatClient:
        client = installed.chat_client(room, identity)
        clients.append(await client.connect())
        return client

    yield joiner
    await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
