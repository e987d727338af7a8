"""A box installed by the install.sh that did everything in bash (main before issue 11's bootstrap) upgrades in
place to this checkout's install.sh: the install-state file is kept as the first run wrote it, the appliance runs
healthy, and `uninstall --purge` then leaves nothing of ours and Debian's own instances as they were."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from harness.freshroot import (
    APPLIANCE,
    CHECKOUT,
    INSTALL,
    LIVEKIT_CLIENT,
    LOOPBACK_CONFIG,
    OURS,
    assert_state,
    debian_instances,
    expected_state,
    explain,
    fresh_root,
    restart_here,
    run_install,
)
from harness.livekit import PrivateNetwork

pytestmark = [pytest.mark.fresh, pytest.mark.timeout(1800)]

# main's last commit whose install.sh installed the Debian packages, recorded the state and placed livekit-server
# itself, in bash; its tree comes from this checkout's history.
BASH_INSTALLER = "d571e58cbf67eb058f8a16fdf8e695d3671ffab3"
OLD = "/root/appliance-bash"


def test_a_box_installed_by_the_bash_installer_upgrades_then_uninstalls_cleanly(
    private_network: PrivateNetwork | None,
) -> None:
    archive = subprocess.run(["git", "-C", str(CHECKOUT), "archive", BASH_INSTALLER], capture_output=True)
    assert archive.returncode == 0, f"{BASH_INSTALLER} is not in this clone's history: {archive.stderr.decode()}"
    # The bash installer knew no [metrics] section: the box it made had no bundled Prometheus.
    with fresh_root(private_network, LOOPBACK_CONFIG) as root:
        debian_before, state = debian_instances(root), expected_state(root, prometheus=False)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(root.path / OLD.lstrip("/"), filter="tar")
        # The bash installer took no --livekit-client-tgz (it had no console).
        command = INSTALL.replace("/root/appliance ", f"{OLD} ").replace(f" --livekit-client-tgz {LIVEKIT_CLIENT}", "")
        old = run_install(root, command, host_network=True)
        assert "install.sh: packages" in old.stdout, old.stdout  # the bash installer's own step
        assert_state(root, state)

        new = run_install(root, INSTALL, host_network=True)
        output = new.stdout + new.stderr
        assert "unchanged  state /var/lib/appliance/install-state.env" in output, output
        assert "unchanged  Debian packages" in output and "unchanged  PostgreSQL cluster" in output, output
        assert_state(root, state)
        restart_here(root)

        done = root.run([APPLIANCE, "uninstall", "--purge", "--yes"], timeout=600)
        assert done.returncode == 0, explain(done)
        assert not root.processes(), [f"{p.name()} ({p.pid})" for p in root.processes()]
        assert [path for path in OURS if root.exists(path)] == []
        assert debian_instances(root) == debian_before
