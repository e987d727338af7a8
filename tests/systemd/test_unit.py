"""The appliance under a real systemd (PID 1 of a container): installed by install.sh's systemd branch, then
started, killed, stopped and journaled by systemd itself. Each test asserts on systemd's own view."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness.livekit import PrivateNetwork, candidates_in, is_loopback
from harness.servers import wait_until
from tests.systemd.box import (
    APPLIANCE,
    CHECKOUT,
    SystemdBox,
    prepare_probe,
    probe,
    sandbox,
    systemd_box,
    wait_active,
)

pytestmark = pytest.mark.timeout(900)

UNIT = "appliance.service"
# What a query of the installed appliance's PostgreSQL needs: its settings, as the CLI loads them.
SQL = (
    "/opt/appliance/venv/bin/python -c 'import sys; from appliance.settings import load; "
    "from appliance.stores import postgres_connection; "
    "print(postgres_connection(load().postgres).execute(sys.argv[1]).fetchall())' "
)


@pytest.fixture(scope="module")
def box(private_network: PrivateNetwork | None) -> Iterator[SystemdBox]:
    with systemd_box(private_network) as box:
        done = box.install()
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.lstrip().startswith("error:")]
        assert not errors, "install.sh succeeded but printed:\n" + "\n".join(errors)
        yield box


def chat(box: SystemdBox, room: str, identity: str, *lines: str) -> list[str]:
    box.run("cat >/root/chat.txt", input="".join(f"{line}\n" for line in lines))
    done = box.run(f"{APPLIANCE} chat {room} --identity {identity} --script /root/chat.txt", timeout=120)
    return done.stdout.splitlines()


def test_install_sh_enabled_and_started_the_unit(box: SystemdBox) -> None:
    shown = box.show(UNIT, "ActiveState", "SubState", "UnitFileState", "User", "ExecMainPID", "FragmentPath")
    assert (shown["ActiveState"], shown["SubState"], shown["UnitFileState"]) == ("active", "running", "enabled")
    assert shown["User"] == "appliance" and shown["FragmentPath"] == f"/etc/systemd/system/{UNIT}"
    main = box.run(f"cat /proc/{shown['ExecMainPID']}/cmdline | tr '\\0' ' '").stdout
    assert "supervisord -n" in main
    status = box.run(f"{APPLIANCE} status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    # The box's only addresses are loopback ones (lo, and the veth's 127.0.0.2).
    addresses = box.run("ip -o addr show | awk '{print $4}'").stdout.split()
    assert addresses and all(a.startswith(("127.", "::1/")) for a in addresses), addresses
    lines = chat(box, "unit-room", "carol", "hello there")
    # Every ICE candidate livekit-server signalled (both directions, its debug log in the journal) is loopback.
    signalled = candidates_in(box.run("journalctl -t appliance-livekit -o cat").stdout)
    assert signalled and all(is_loopback(address) for address, _, _ in signalled), signalled
    assert lines[0].startswith("agent: Hello!"), lines
    assert lines[1:3] == [
        "carol: hello there",
        "agent: [offline model] I have heard carol. This conversation holds 2 messages. Last: carol: hello there",
    ]


Facts = dict[str, Any]

PSEUDO_DEVICES = set(
    [
        "char",
        "fd",
        "full",
        "hugepages",
        "log",
        "mqueue",
        "null",
        "ptmx",
        "pts",
        "random",
        "shm",
        "stderr",
        "stdin",
        "stdout",
        "tty",
        "urandom",
        "zero",
    ]
)
# Per sandboxing directive of the unit, what a process under it sees; each must hold under the unit's whole sandbox
# and fail with that directive (all its lines) taken out.
CHECKS: dict[str, Callable[[Facts], bool]] = {
    "CapabilityBoundingSet": lambda f: int(f["CapBnd"], 16) == 0,
    "ProtectSystem": lambda f: f["write_outside_rw_paths"] == "EROFS",
    "ProtectHome": lambda f: f["home"] != "listed",
    "PrivateTmp": lambda f: f["host_tmp_file"] is False,
    "ProtectKernelTunables": lambda f: "ro" in f["proc_sys"].split(","),
    "ProtectKernelModules": lambda f: f["modules"] != "listed",
    "ProtectProc": lambda f: "hidepid=invisible" in f["proc"] or "hidepid=2" in f["proc"],
    "LockPersonality": lambda f: f["personality"] != "ok",
    "RestrictSUIDSGID": lambda f: f["setuid_bit"] == "EPERM",
    "RestrictNamespaces": lambda f: f["user_namespace"] != "ok",
    "RestrictAddressFamilies": lambda f: f["af_packet"] == "EAFNOSUPPORT",
    # Only API pseudo devices (a VM would show its disks without it; this container shows systemd's initctl).
    "PrivateDevices": lambda f: set(f["dev"]) <= PSEUDO_DEVICES,
    "SystemCallFilter": lambda f: f["ptrace"] == "EPERM",
    "SystemCallErrorNumber": lambda f: f.get("ptrace") == "EPERM",  # without it the probe dies of SIGSYS
    "UMask": lambda f: f["umask"] == "0o27",
}
# Directives no probe here can tell apart, and why (each is kept: they cost nothing and say what is meant).
NOT_PROBED = {
    "NoNewPrivileges": "implied for a non-root User by SystemCallFilter, RestrictAddressFamilies and others",
    "AmbientCapabilities": "empty by default for a non-root User",
    "PrivateMounts": "implied: ProtectSystem and PrivateTmp already give the unit its own mount namespace",
    "ProtectClock": "setting the clock needs CAP_SYS_TIME, which CapabilityBoundingSet= removes anyway",
    "RestrictRealtime": "realtime scheduling needs CAP_SYS_NICE or an RLIMIT_RTPRIO this user does not have",
    "ProtectControlGroups": "the container's /sys/fs/cgroup is a host bind where later mounts stack over the unit's"
    " read-only one, so its flag cannot be read here (cgroup files are root's anyway)",
    "ProtectKernelLogs": "the kernel log is root's anyway (dmesg_restrict=1, /dev/kmsg 0600)",
    "KeyringMode": "a private session keyring is not visible without keyctl",
    "SystemCallArchitectures": "needs a non-native (32-bit) binary to show",
    "DevicePolicy": "PrivateDevices already leaves only pseudo devices",
    "RemoveIPC": "acts when the unit stops",
    "ReadWritePaths": "checked positively: the appliance writes its data through a chat, a backup and a restore",
    "MemoryHigh": "cgroup v1 has no memory.high",
    "MemoryMax": "checked on the running unit's cgroup",
    "TasksMax": "checked on the running unit's cgroup",
    "LimitNOFILE": "checked on the running unit's processes",
}


def test_each_sandbox_directive_is_in_force_and_fails_without_it(box: SystemdBox) -> None:
    prepare_probe(box)
    directives = sandbox(box)
    unknown = {key for key, _ in directives} - set(CHECKS) - set(NOT_PROBED) - {"PrivateIPC", "ProtectHostname"}
    assert not unknown, f"directives with neither a check nor a reason: {unknown}"
    full = probe(box, directives)
    assert full, "the probe did not run under the unit's sandbox"
    assert full["NoNewPrivs"] == "1" and full["Seccomp"] == "2"
    assert full["chown_to_self"] == "ok"  # supervisord's own socket
    pid1 = {ns: box.run(f"readlink /proc/1/ns/{ns}").stdout.strip() for ns in ("ipc", "uts")}
    checks: dict[str, Callable[[Facts], bool]] = {
        **CHECKS,
        "PrivateIPC": lambda f: f["ipc_ns"] != pid1["ipc"],
        "ProtectHostname": lambda f: f["uts_ns"] != pid1["uts"],
    }
    failed = []
    for key in dict.fromkeys(k for k, _ in directives):
        if key not in checks:
            continue
        assert checks[key](full), f"{key}: not in force under the unit's sandbox: {full}"
        without = probe(box, [(k, v) for k, v in directives if k != key])
        if without and checks[key](without):
            failed.append(key)
        print(f"{key}: in force; without it the check fails")
    assert not failed, f"checks that still pass with their directive removed: {failed}"
    # supervisord chowns its socket at start: SystemCallFilter=@chown gives back what ~@privileged took.
    without_chown = probe(box, [(k, v) for k, v in directives if (k, v) != ("SystemCallFilter", "@chown")])
    assert without_chown["chown_to_self"] == "EPERM"


def test_the_running_units_limits(box: SystemdBox) -> None:
    shown = box.show(UNIT, "MemoryMax", "TasksMax", "ControlGroup", "MainPID")
    memory = box.run(f"cat /sys/fs/cgroup/memory{shown['ControlGroup']}/memory.limit_in_bytes").stdout.strip()
    assert memory == shown["MemoryMax"]  # cgroup v1 shows MemoryMax; MemoryHigh has no v1 file
    assert box.run(f"cat /sys/fs/cgroup/pids{shown['ControlGroup']}/pids.max").stdout.strip() == shown["TasksMax"]
    # LimitNOFILE=65536, up to the box's own hard limit (20000 on these machines, whose sandbox has no
    # CAP_SYS_RESOURCE to raise it): systemd applies what it can.
    box_hard = int(box.run("awk '/Max open files/ {print $5}' /proc/1/limits").stdout)
    limits = box.run(f"cat /proc/{shown['MainPID']}/limits").stdout
    expected = min(65536, box_hard)
    assert re.search(rf"Max open files\s+{expected}\s+{expected}\s", limits), limits


DENIED = re.compile(r"Operation not permitted|Permission denied|Read-only file system|EPERM|EACCES|EROFS")


def test_nothing_the_programs_need_is_denied_through_a_chat_a_backup_and_a_restore(box: SystemdBox) -> None:
    since = box.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    assert "holds 2 messages" in chat(box, "backup-room", "erin", "remember this")[-1]
    box.run(f"{APPLIANCE} backup /root/box.tar.gz")
    box.run(f"{APPLIANCE} restore /root/box.tar.gz --yes", timeout=300)
    wait_until(lambda: box.run(f"{APPLIANCE} status", check=False).returncode == 0, 120, "healthy after restore")
    # A new room: the old one may still be open without its agent until the reconciler dispatches it.
    assert "holds 2 messages" in chat(box, "after-restore", "erin", "still there?")[-1]
    journal = box.run(f"journalctl --no-pager --since '{since}' -u {UNIT}").stdout
    denied = [line for line in journal.splitlines() if DENIED.search(line)]
    assert not denied, "denied under the unit's sandbox:\n" + "\n".join(denied)


def test_kill_9_of_supervisord_is_restarted_by_systemd(box: SystemdBox) -> None:
    before = box.show(UNIT, "NRestarts", "ExecMainPID")
    box.run(f"kill -9 {before['ExecMainPID']}")
    wait_until(
        lambda: int(box.show(UNIT, "NRestarts")["NRestarts"]) > int(before["NRestarts"]), 60, "systemd's restart"
    )
    wait_active(box)
    wait_until(lambda: box.run(f"{APPLIANCE} status", check=False).returncode == 0, 120, "every program back")
    after = box.show(UNIT, "NRestarts", "ExecMainPID")
    assert after["ExecMainPID"] != before["ExecMainPID"]
    print(f"NRestarts after kill -9 of supervisord: {after['NRestarts']}")


def test_stop_drains_a_room_in_conversation_then_start_resumes_it(box: SystemdBox) -> None:
    # A participant who stays: one line, then silence with the connection open.
    stay = "(printf 'before the stop\\n'; sleep 300)"
    box.run(f"{stay} | {APPLIANCE} chat drain-room --identity dave >/root/drain.out 2>&1 &")
    wait_until(lambda: "holds 2 messages" in box.run("cat /root/drain.out").stdout, 60, "dave's answer")
    shown = box.show(UNIT, "TimeoutStopUSec", "ControlGroup")
    timeout_stop, control_group = shown["TimeoutStopUSec"], shown["ControlGroup"]
    started = time.monotonic()
    box.run("systemctl stop appliance", timeout=900)
    took = time.monotonic() - started
    print(f"systemctl stop with a room draining: {took:.1f} s (TimeoutStopUSec={timeout_stop})")
    shown = box.show(UNIT, "ActiveState", "Result")
    assert (shown["ActiveState"], shown["Result"]) == ("inactive", "success")  # not "timeout": inside the limit
    left = box.run(f"cat /sys/fs/cgroup/pids{control_group}/cgroup.procs 2>/dev/null || true")
    assert left.stdout.strip() == "", "processes left in the unit's cgroup"
    drained = box.run(f"journalctl -u {UNIT} -t appliance-worker --no-pager --since '-5min'").stdout
    assert "drain" in drained.lower()
    box.run("pkill -f '[a]ppliance chat drain-room' || true")  # dave leaves, or his client would rejoin at once
    box.run("systemctl start appliance")
    wait_until(lambda: box.run(f"{APPLIANCE} status", check=False).returncode == 0, 180, "healthy after start")
    rows = box.run(SQL + "\"SELECT status FROM conversations WHERE room = 'drain-room'\"").stdout
    assert "interrupted" in rows, rows
    lines = chat(box, "drain-room", "dave", "after the start")
    assert lines[0] == "agent: I'm back, and I remember our conversation.", lines
    assert "before the stop" not in lines[0] and "holds" in lines[-1]
    held = int(re.search(r"holds (\d+) messages", lines[-1]).group(1))  # type: ignore[union-attr]
    assert held >= 4, lines  # greeting, dave's line and its answer, the resume greeting, the new line


def workers(box: SystemdBox) -> list[dict[str, Any]]:
    return list(json.loads(box.run(f"{APPLIANCE} status --json", check=False).stdout)["workers"])


def room_pid(box: SystemdBox, room: str) -> int | None:
    return next((r["pid"] for w in workers(box) for r in w["rooms"] if r["room"] == room), None)


def test_a_room_killed_for_memory_stops_neither_the_unit_nor_other_rooms(box: SystemdBox) -> None:
    """The operator's agent (harness/hog_agent.py, installed in the venv as an operator's would be) leaks
    memory when told to: its room's process is killed at job_memory_limit_mb, the rest goes on."""
    site = box.run("/opt/appliance/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'")
    box.copy_in(CHECKOUT / "harness/hog_agent.py", f"{site.stdout.strip()}/hog_agent.py")
    box.run(
        "sed -i 's/^\\[worker\\]$/[worker]\\nagent = \"hog_agent:build\"\\njob_memory_limit_mb = 300/'"
        " /etc/appliance/appliance.toml"
    )
    box.run(f"{APPLIANCE} reconfigure", timeout=300)
    wait_until(lambda: box.run(f"{APPLIANCE} status", check=False).returncode == 0, 120, "healthy on the new agent")
    before = box.show(UNIT, "NRestarts", "ExecMainPID")
    stay = "(printf 'I stay\\n'; sleep 300)"
    box.run(f"{stay} | {APPLIANCE} chat calm-room --identity bob >/root/calm.out 2>&1 &")
    wait_until(lambda: "holds 2 messages" in box.run("cat /root/calm.out").stdout, 60, "bob's answer")
    calm = room_pid(box, "calm-room")
    assert calm is not None
    greedy = "(printf 'eat memory\\n'; sleep 300)"
    box.run(f"{greedy} | {APPLIANCE} chat greedy-room --identity alice >/root/greedy.out 2>&1 &")
    wait_until(lambda: any(w["counters"].get("memory_kills", 0) >= 1 for w in workers(box)), 120, "the memory kill")
    wait_until(lambda: "I'm back" in box.run("cat /root/greedy.out").stdout, 120, "the greedy room resumed")
    after = box.show(UNIT, "NRestarts", "ExecMainPID", "ActiveState")
    assert (after["ActiveState"], after["NRestarts"], after["ExecMainPID"]) == (
        "active", before["NRestarts"], before["ExecMainPID"]
    )  # fmt: skip
    assert room_pid(box, "calm-room") == calm  # the other room's process was not touched
    box.run("pkill -f '[a]ppliance chat' || true")  # [a]: not this command's own shell


def test_the_worker_journals_each_line_at_its_level(box: SystemdBox) -> None:
    """After the memory kill: its warning is at priority 4 and shown by ``-p warning``, which leaves info lines out;
    ``appliance logs worker`` reads the same journal."""
    warnings = box.run("journalctl -t appliance-worker -p warning -o cat --no-pager").stdout
    assert re.search(r"room greedy-room: its process \d+ died \(", warnings), warnings[-2000:]
    assert "registered worker" not in warnings
    records = box.run("journalctl -t appliance-worker -o json --no-pager").stdout.splitlines()
    levels = {r["PRIORITY"] for r in map(json.loads, records) if "registered worker" in r["MESSAGE"]}
    died = {r["PRIORITY"] for r in map(json.loads, records) if "room greedy-room: its process" in r["MESSAGE"]}
    assert (levels, died) == ({"6"}, {"4"})
    logs = box.run(f"{APPLIANCE} logs worker").stdout
    assert "registered worker" in logs and "room greedy-room: its process" in logs


def test_a_changed_unit_is_reloaded_and_applied(box: SystemdBox) -> None:
    """A longer drain makes a longer TimeoutStopSec: reconfigure rewrites the unit, systemd reloads it, and the
    service restarts under it (the processes it starts are the ones the unit confines)."""
    before = box.show(UNIT, "TimeoutStopUSec", "ExecMainPID")
    box.run("sed -i 's/^drain_timeout_s = 10$/drain_timeout_s = 12/' /etc/appliance/appliance.toml")
    done = box.run(f"{APPLIANCE} reconfigure", timeout=300)
    assert "restarted  appliance.service (its unit changed)" in done.stdout + done.stderr, done.stdout + done.stderr
    after = box.show(UNIT, "TimeoutStopUSec", "ExecMainPID", "NeedDaemonReload", "ActiveState")
    assert after["TimeoutStopUSec"] != before["TimeoutStopUSec"]
    assert after["NeedDaemonReload"] == "no" and after["ActiveState"] == "active"
    assert after["ExecMainPID"] != before["ExecMainPID"]
    unchanged = box.run(f"{APPLIANCE} reconfigure", timeout=300)
    assert "restarted: nothing" in unchanged.stdout + unchanged.stderr
    assert box.show(UNIT, "ExecMainPID")["ExecMainPID"] == after["ExecMainPID"]


def test_uninstall_purge_disables_and_removes_the_unit(box: SystemdBox) -> None:
    box.run(f"{APPLIANCE} uninstall --purge --yes", timeout=300)
    assert box.run(f"systemctl list-unit-files {UNIT} --no-legend", check=False).stdout.strip() == ""
    assert box.run(f"test -e /etc/systemd/system/{UNIT}", check=False).returncode != 0
    assert box.show(UNIT, "LoadState")["LoadState"] == "not-found"
    assert box.run("pgrep -u appliance", check=False).stdout.strip() == ""
