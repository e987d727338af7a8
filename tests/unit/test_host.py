"""The box's setup: what install.sh and appliance.host agree on."""

from __future__ import annotations

import re
from pathlib import Path

from appliance import host
from appliance.install_state import STATE_FILE

INSTALL_SH = (Path(__file__).resolve().parents[2] / "install.sh").read_text()


def test_install_sh_installs_the_bootstrap_packages_host_records() -> None:
    found = re.search(r"^readonly BOOTSTRAP_PACKAGES=\(([^)]*)\)", INSTALL_SH, re.MULTILINE)
    assert found and tuple(found[1].split()) == host.BOOTSTRAP_PACKAGES


def test_install_sh_writes_the_files_host_reads() -> None:
    assert f"STATE_FILE={STATE_FILE} " in INSTALL_SH and f"PACKAGES_BEFORE={host.PACKAGES_BEFORE}\n" in INSTALL_SH
    assert "APPLIANCE_SOURCE=" in INSTALL_SH and "APPLIANCE_INSTALL_LOG=" in INSTALL_SH  # Host.from_environment


def test_install_sh_stays_a_small_bootstrap() -> None:
    assert len(INSTALL_SH.splitlines()) < 280


def test_a_livekit_server_is_known_by_what_it_says(tmp_path: Path) -> None:
    fake = tmp_path / "livekit-server"
    fake.write_text("#!/bin/sh\necho 'livekit-server version 1.13.5'\n")
    fake.chmod(0o755)
    other = tmp_path / "other"
    other.write_text("#!/bin/sh\necho 'redis-server version 7.0.15'\n")
    other.chmod(0o755)
    assert host.livekit_version(fake) == "1.13.5"
    assert host.livekit_version(other) is None and host.livekit_version(tmp_path / "absent") is None
