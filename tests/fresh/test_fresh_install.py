"""The README's first command on a fresh machine (issue 5, tests 7 and 8; the re-run's time: bench/install_rerun.py).

A fresh Debian 12 root made by debootstrap gets a copy of this checkout and runs ``./install.sh --yes`` as root.
Only the downloads (debootstrap, apt, pip) leave the box, from the host's network namespace; the appliance is then
restarted from the session's private network namespace, where the runtime checks run, so every packet they send
stays on loopback. The bundled livekit-server is installed with ``loopback_only`` (every port on 127.0.0.1, ICE on
lo, a loopback STUN address) and ``--node-ip 127.0.0.1``.

The tests share one root and run in order: install, re-run, uninstall keeping the data and install again,
uninstall --purge.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.appliance import WHEELHOUSE
from harness.chroot import FreshRoot
from harness.freshroot import (
    APPLIANCE,
    OURS,
    SOURCE,
    DebianInstances,
    assert_state,
    debian_instances,
    expected_state,
    explain,
    fresh_root,
    pwd_entry,
    restart_here,
    run_install,
    write_config,
)
from harness.livekit import PrivateNetwork, is_loopback
from tests.fresh.conftest import TIMINGS

pytestmark = [pytest.mark.fresh, pytest.mark.timeout(1800)]


@dataclass
class Fresh:
    root: FreshRoot
    debian_before: DebianInstances | None = None
    state: dict[str, str] | None = None  # what install.sh's state file must say
    installed: bool = False
    appliance_uid: int | None = None
    appliance_gid: int | None = None


@pytest.fixture(scope="module")
def fresh(private_network: PrivateNetwork | None) -> Iterator[Fresh]:
    with fresh_root(private_network) as root:
        yield Fresh(root)


def installed(fresh: Fresh) -> FreshRoot:
    if not fresh.installed:
        pytest.fail("the fresh install failed (its own test says why): nothing after it can be checked")
    return fresh.root


def test_install_sh_on_a_fresh_debian_12(fresh: Fresh) -> None:
    """Test 7: ./install.sh --yes on a fresh root, then status healthy and a chat round trip with the agent."""
    root = fresh.root
    fresh.debian_before = debian_instances(root)
    fresh.state = expected_state(root)
    assert fresh.state["PACKAGES_ADDED"] and fresh.state["SERVICES_DISABLED"], fresh.state

    started = time.monotonic()
    run_install(root, host_network=True)
    took = time.monotonic() - started
    TIMINGS.append(("fresh install (install.sh --yes, Debian 12 debootstrap root)", took))
    print(f"fresh install: {took:.1f} s")
    fresh.installed = True
    assert_state(root, fresh.state)
    user = pwd_entry(root, "appliance")
    fresh.appliance_uid, fresh.appliance_gid = user

    restart_here(root)
    status = root.run([APPLIANCE, "status"])
    print(status.stdout)
    assert status.returncode == 0, explain(status)

    listening = subprocess.run(["ss", "-H", "-ltnu"], check=True, capture_output=True, text=True).stdout
    exposed = [line for line in listening.splitlines() if not is_loopback(line.split()[4].rsplit(":", 1)[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"

    script = root.path / "root/chat.txt"
    script.write_text("hello there\n\nhow many messages now?\n")
    chat = root.run([APPLIANCE, "chat", "fresh-room", "--identity", "carol", "--script", "/root/chat.txt"])
    assert chat.returncode == 0, explain(chat)
    lines = chat.stdout.splitlines()
    assert lines[0].startswith("agent: Hello!"), lines
    assert lines[1:3] == [
        "carol: hello there",
        "agent: [offline model] I have heard carol. This conversation holds 2 messages. Last: carol: hello there",
    ]
    assert lines[3] == "carol: how many messages now?"
    assert "holds 4 messages" in lines[4]

    # The web console, where the README says: its login page and livekit-client's bundle, from the box.
    with urllib.request.urlopen("http://127.0.0.1:8090/", timeout=10) as page:
        assert page.status == 200 and 'action="/login"' in page.read().decode()
    with urllib.request.urlopen("http://127.0.0.1:8090/static/livekit-client.umd.js", timeout=10) as bundle:
        assert bundle.status == 200 and len(bundle.read()) > 100_000


def test_second_install_sh_changes_nothing(fresh: Fresh) -> None:
    """A re-run reports every step unchanged, restarts nothing, records nothing new and needs no network (it runs
    in the private namespace). How long it takes is bench/install_rerun.py's figure, not a test's."""
    root = installed(fresh)
    assert fresh.state is not None
    before = {p.pid for p in root.processes()}

    started = time.monotonic()
    done = run_install(root, timeout=300)
    TIMINGS.append(("second install.sh --yes (nothing to do)", time.monotonic() - started))
    output = done.stdout + done.stderr
    print(output)

    # install.sh's steps ("install.sh: STEP OUTCOME ...") and appliance install's ("  OUTCOME  WHAT").
    steps = [line.split() for line in output.splitlines() if line.startswith("install.sh: ")]
    assert {words[2] for words in steps if words[1] != "log"} <= {"ok", "unchanged", "done"}, output
    outcomes = {line.split()[0] for line in output.splitlines() if line.startswith("  ")}
    assert outcomes <= {"ok", "unchanged", "healthy"}, output
    assert {p.pid for p in root.processes()} == before, "a re-run restarted something"
    assert_state(root, fresh.state)


def test_the_example_agent_on_the_fresh_appliance(fresh: Fresh) -> None:
    """README, "Deploy your agent": examples/order-desk installed (offline, from the tests' wheelhouse) on the fresh
    box, greeting in a new room; then removed, back to the sample."""
    root = installed(fresh)
    for wheel in WHEELHOUSE.glob("*.whl"):
        root.copy_in(wheel, f"/root/wheelhouse/{wheel.name}")
    started = time.monotonic()
    done = root.run([APPLIANCE, "agent", "install", f"{SOURCE}/examples/order-desk", "--no-index", "--find-links",
                     "/root/wheelhouse"], timeout=600)  # fmt: skip
    installed_in = time.monotonic() - started
    print(done.stderr)
    assert done.returncode == 0, explain(done)
    assert "error" not in done.stderr.lower(), done.stderr
    (root.path / "root/empty.txt").write_text("")
    chat = root.run([APPLIANCE, "chat", "new-agent-room", "--identity", "dana", "--script", "/root/empty.txt"])
    greeted = time.monotonic() - started
    assert chat.returncode == 0 and chat.stdout.startswith("agent: Hello!"), explain(chat)
    TIMINGS.append(("appliance agent install examples/order-desk (offline)", installed_in))
    TIMINGS.append(("agent install to its first greeting (appliance chat in a new room, its start included)", greeted))
    status = root.run([APPLIANCE, "status"])
    print(status.stdout)
    assert status.returncode == 0 and "agent:    order-desk 1.0.0 (order_desk.agent:build)" in status.stdout
    removed = root.run([APPLIANCE, "agent", "remove"], timeout=300)
    assert removed.returncode == 0, explain(removed)


def test_uninstall_keeps_the_data_for_a_reinstall(fresh: Fresh) -> None:
    """Without --purge: programs, configs and unit go; data, logs, secrets and user stay, and install.sh then
    brings the appliance back on them (the PostgreSQL cluster holds the password in secrets.toml)."""
    root = installed(fresh)
    assert fresh.state is not None
    secrets = root.path / "etc/appliance/secrets.toml"
    secrets_before = secrets.read_bytes()

    done = root.run([APPLIANCE, "uninstall", "--yes"], timeout=600)
    print(done.stdout + done.stderr)
    assert done.returncode == 0, explain(done)
    assert not root.processes(), [f"{p.name()} ({p.pid})" for p in root.processes()]
    gone = ["/opt/appliance", "/etc/appliance/appliance.toml", "/etc/systemd/system/appliance.service"]
    assert [path for path in gone if root.exists(path)] == []
    assert root.exists("/var/lib/appliance/postgres/PG_VERSION") and root.exists("/var/log/appliance")
    assert secrets.read_bytes() == secrets_before
    assert pwd_entry(root, "appliance") == (fresh.appliance_uid, fresh.appliance_gid)

    # The operator's settings went with /etc/appliance; this box's (loopback only) are written again.
    write_config(root)
    started = time.monotonic()
    again = run_install(root, host_network=True)
    TIMINGS.append(("install.sh --yes after uninstall (data kept)", time.monotonic() - started))
    output = again.stdout + again.stderr
    assert "unchanged  PostgreSQL cluster" in output and "unchanged  secrets" in output, output
    # The state file stayed with the data: the box before the first install, not the one uninstall left.
    assert_state(root, fresh.state)
    restart_here(root)


def test_uninstall_purge_leaves_nothing(fresh: Fresh) -> None:
    """Test 8: no process, user, unit or file of ours is left, and Debian's own instances are as they were."""
    root = installed(fresh)
    assert fresh.appliance_uid is not None

    started = time.monotonic()
    done = root.run([APPLIANCE, "uninstall", "--purge", "--yes"], timeout=600)
    TIMINGS.append(("appliance uninstall --purge --yes", time.monotonic() - started))
    print(done.stdout + done.stderr)
    assert done.returncode == 0, explain(done)

    assert not root.processes(), [f"{p.name()} ({p.pid})" for p in root.processes()]
    assert [path for path in OURS if root.exists(path)] == []
    assert not list((root.path / "etc/systemd/system").glob("*.wants/appliance.service"))
    for table in ("passwd", "group", "shadow", "gshadow"):
        names = [line.split(":")[0] for line in (root.path / "etc" / table).read_text().splitlines()]
        assert "appliance" not in names, f"/etc/{table} still names the appliance"
    assert leftovers(root, fresh.appliance_uid, fresh.appliance_gid) == []
    assert debian_instances(root) == fresh.debian_before


def leftovers(root: FreshRoot, uid: int, gid: int | None) -> list[str]:
    """Files in the root owned by the appliance's user or group, or named for it, that no Debian package
    ships; the test's own inputs (/root) aside."""
    packaged = set()
    for listing in (root.path / "var/lib/dpkg/info").glob("*.list"):
        packaged.update(listing.read_text().splitlines())
    skip = {root.path / d for d in ("proc", "sys", "dev", "run", "root", "var/cache/apt/archives")}
    found = []
    for top, dirs, files in os.walk(root.path):
        here = Path(top)
        dirs[:] = [d for d in dirs if here / d not in skip]
        for name in dirs + files:
            path = here / name
            inside = "/" + str(path.relative_to(root.path))
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if (st.st_uid == uid or st.st_gid == gid or "appliance" in name) and inside not in packaged:
                found.append(inside)
    return found
