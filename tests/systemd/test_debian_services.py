"""A box already running Debian's own Redis and PostgreSQL under systemd: install.sh and uninstall --purge leave
those services exactly as they were (enabled, active, the same main processes)."""

from __future__ import annotations

import pytest

from harness.livekit import PrivateNetwork
from tests.systemd.box import APPLIANCE, SystemdBox, systemd_box

pytestmark = pytest.mark.timeout(900)

UNITS = ("redis-server.service", "postgresql.service", "postgresql@15-main.service")


def services(box: SystemdBox) -> dict[str, tuple[str, str, str]]:
    """(enabled, active, main pid) of each of Debian's units, as systemd tells them."""
    seen = {}
    for unit in UNITS:
        shown = box.show(unit, "UnitFileState", "ActiveState", "MainPID")
        seen[unit] = (shown["UnitFileState"], shown["ActiveState"], shown["MainPID"])
    return seen


def test_debian_redis_and_postgresql_services_are_left_as_they_were(private_network: PrivateNetwork | None) -> None:
    with systemd_box(private_network) as box:
        # Debian's redis-server.service has PrivateUsers=yes, and this container cannot make user namespaces.
        box.run(
            "mkdir -p /etc/systemd/system/redis-server.service.d && printf '[Service]\\nPrivateUsers=no\\n'"
            " >/etc/systemd/system/redis-server.service.d/no-user-namespace.conf"
        )
        # Installed and started as Debian does (from the image's package cache: the box has no network).
        box.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server postgresql")
        before = services(box)
        assert before["redis-server.service"][:2] == ("enabled", "active"), before
        assert before["postgresql@15-main.service"][1] == "active", before
        box.install()
        assert services(box) == before
        assert box.run(f"{APPLIANCE} status", check=False).returncode == 0
        box.run(f"{APPLIANCE} uninstall --purge --yes", timeout=300)
        assert services(box) == before
        assert box.run("systemctl list-unit-files appliance.service --no-legend", check=False).stdout.strip() == ""
