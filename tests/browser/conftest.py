"""The web console in a real browser: Debian's chromium, inside the tests' private network namespace."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.appliance import InstalledAppliance
from harness.browser import CHROMIUM
from harness.livekit import PrivateNetwork

PASSWORD = "browser test password"


@pytest.fixture(autouse=True)
def _as_root_in_private_network(private_network: PrivateNetwork | None) -> None:
    if os.geteuid() != 0 or private_network is None:
        pytest.skip("installing the appliance creates a user and runs PostgreSQL as it: needs root")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} missing: scripts/test installs Debian's chromium")


def console_url(installed: InstalledAppliance) -> str:
    return f"http://127.0.0.1:{installed.settings.console.port}/"


@pytest.fixture(scope="session")
def box() -> Iterator[InstalledAppliance]:
    """One appliance (text only, the offline model) for the page's tests, the operator's password set."""
    installed = InstalledAppliance()
    installed.write_config()
    try:
        installed.install()
        installed.run("console", "passwd", stdin=PASSWORD)
        yield installed
    finally:
        installed.close()
