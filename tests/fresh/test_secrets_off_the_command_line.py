"""No secret on a command line (issue 9, item 3): /proc/*/cmdline is readable by every local user and a shell's
history keeps what was typed. install.sh takes an external LiveKit's API secret from a file or standard input
(``--livekit-api-secret-file``), and every process it and ``appliance install`` start is traced (``strace -f -e
trace=execve``): no argument of any holds a secret, and no world-readable file of the appliance does.

The box is installed first as the README says (a bundled livekit-server, downloads from the host's network), then
moved, from the private network, onto an external LiveKit: a real livekit-server in this session's namespace.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.chroot import FreshRoot
from harness.freshroot import (
    SOURCE,
    assert_state,
    expected_state,
    fresh_root,
    restart_here,
    run_install,
)
from harness.livekit import LiveKitServer, PrivateNetwork

pytestmark = [pytest.mark.fresh, pytest.mark.timeout(1800)]

# The appliance's own files; the secrets file itself is 0600 and is the one place the secrets belong.
OUR_DIRS = ["/etc/appliance", "/etc/systemd/system", "/var/lib/appliance", "/var/log/appliance", "/run/appliance"]


@pytest.fixture
def external_livekit() -> Iterator[LiveKitServer]:
    server = LiveKitServer().start()
    yield server
    server.close()


def test_livekit_api_secret_never_on_a_command_line(
    private_network: PrivateNetwork | None, external_livekit: LiveKitServer, tmp_path: Path
) -> None:
    with fresh_root(private_network) as root:
        state = expected_state(root)
        run_install(root, host_network=True)
        restart_here(root)  # the appliance's programs now run in the private network, beside the external LiveKit

        external = (
            f"cd {SOURCE} && ./install.sh --yes --livekit-url {external_livekit.url}"
            f" --livekit-api-key {external_livekit.api_key} --livekit-api-secret-file"
        )
        secret_file = root.path / "root/livekit-secret"
        secret_file.write_text(external_livekit.api_secret + "\n")
        secret_file.chmod(0o600)
        traces = []
        for name, command, given in [
            ("file", f"{external} /root/livekit-secret", None),  # the move: livekit.url and its keys change
            ("stdin", f"{external} -", external_livekit.api_secret + "\n"),  # the same again: nothing changes
        ]:
            trace = tmp_path / f"execve-{name}.txt"
            strace = ["strace", "-f", "-e", "trace=execve", "-s", "65535", "-o", str(trace)]
            done = run_install(root, command, wrap=strace, input=given, timeout=600)
            assert "registered with LiveKit" in done.stdout + done.stderr, done.stdout + done.stderr
            traces.append(trace.read_text())

        secrets = secret_values(root)
        assert secrets["livekit.api_secret"] == external_livekit.api_secret
        assert secrets["livekit.api_key"] == external_livekit.api_key
        del secrets["livekit.api_key"]  # a key names the credential; it is not one
        for execs in traces:
            # The trace saw the whole run: install.sh, and appliance install exec'd from it.
            assert "/opt/appliance/venv/bin/appliance" in execs and '"install"' in execs, execs[-2000:]
            for field, value in secrets.items():
                assert value not in execs, f"{field} is on a command line (strace -e trace=execve)"
        for field, value in secrets.items():
            assert not in_command_lines(root, value), f"{field} is on a running process's command line"
            assert not world_readable_holding(root, value), f"{field} is in a world-readable file"
            assert not logs_holding(root, value), f"{field} is in install.sh's log"
        assert_state(root, state)


def secret_values(root: FreshRoot) -> dict[str, str]:
    with (root.path / "etc/appliance/secrets.toml").open("rb") as fh:
        doc = tomllib.load(fh)
    return {f"{section}.{key}": str(value) for section, table in doc.items() for key, value in table.items()}


def in_command_lines(root: FreshRoot, value: str) -> list[str]:
    found = []
    for proc in root.processes():
        try:
            if any(value in word for word in proc.cmdline()):
                found.append(f"{proc.name()} ({proc.pid})")
        except psutil.Error:
            continue
    return found


def world_readable_holding(root: FreshRoot, value: str) -> list[str]:
    found = []
    for top in OUR_DIRS:
        for here, _, files in os.walk(root.path / top.lstrip("/")):
            for name in files:
                path = Path(here) / name
                st = path.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH and value.encode() in path.read_bytes():
                    found.append("/" + str(path.relative_to(root.path)))
    return found


def logs_holding(root: FreshRoot, value: str) -> list[str]:
    logs = (root.path / "var/log/appliance").glob("install-*.log")
    return [path.name for path in logs if value.encode() in path.read_bytes()]
