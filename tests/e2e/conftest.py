"""Fixtures: a private network namespace for the session, and one livekit-server inside it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from livekit.rtc._ffi_client import FfiClient

from tests.harness.livekit import LiveKitServer, PrivateNetwork


@pytest.fixture(scope="session")
def private_network() -> Iterator[PrivateNetwork]:
    """Everything the session starts from here on (server, rtc SDK runtime) lives in a namespace with only loopback."""
    if FfiClient._instance is not None:
        # Its threads were started outside and would stay outside: the clients could not reach the server.
        pytest.fail("the livekit rtc SDK was started before the e2e fixtures: run tests/e2e in a pytest of its own")
    try:
        network = PrivateNetwork().enter()
    except PermissionError as exc:
        pytest.skip(f"WebRTC over loopback needs a private network namespace: {exc}")
    yield network
    network.leave()


@pytest.fixture(scope="session")
def livekit_server(private_network: PrivateNetwork) -> Iterator[LiveKitServer]:
    # Debug level logs every ICE candidate signalled, which the tests check.
    server = LiveKitServer(log_level="debug").start()
    yield server
    server.close()
