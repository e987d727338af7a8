"""Logs for real: each program's lines in a private systemd-journald under its identifier and level, read back
with journalctl and `appliance logs`; and, without a journal, in rotated files that `appliance logs` reads.

The journal test runs a real systemd-journald in a private mount namespace (``unshare -m``): a tmpfs on /run (its
sockets, the runtime journal and a drop-in config) and on /dev (only the usual device nodes and the /dev/log
link), so nothing of the machine's is touched. Every command that must see that journal enters the namespace
with ``nsenter``. supervisord runs there too, with the programs' command lines and configs made by appliance.logs,
as config/supervisord.conf.j2 renders them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from appliance.logs import postgres_log_lines, program_output, redis_log_lines
from appliance.supervisor import Supervisor
from harness.livekit import binary as livekit_binary
from harness.livekit import free_udp_port
from harness.servers import free_port, pg_bindir, wait_until

ROOT = Path(__file__).parents[2]
JOURNALD = Path("/lib/systemd/systemd-journald")
SUPERVISORD = Path(sys.executable).parent / "supervisord"

# Sets up the namespace, starts journald, says "ready", and stops journald when told to (TERM).
NAMESPACE = r"""
set -eu
state=$1
mount --make-rprivate /
mkdir -p "$state/dev"
mount --bind /dev "$state/dev"
mount -t tmpfs -o mode=755 tmpfs /dev
for node in null zero full random urandom tty ptmx; do
    touch "/dev/$node"; mount --bind "$state/dev/$node" "/dev/$node"
done
mkdir /dev/pts /dev/shm
mount --bind "$state/dev/pts" /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /run/systemd/journal/dev-log /dev/log
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d /run/log
printf '[Journal]\nStorage=volatile\nReadKMSG=no\nRateLimitBurst=0\nForwardToSyslog=no\nForwardToWall=no\n' \
    > /run/systemd/journald.conf.d/test.conf
/lib/systemd/systemd-journald &
journald=$!
trap 'kill $journald; wait $journald; exit 0' TERM INT
for _ in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
[ -S /run/systemd/journal/stdout ]
echo ready
wait $journald
"""

# A program of ours: the lines agent.logs writes, at every level, a traceback, and an unprefixed print.
EMITTER = """\
import logging, os, sys, time
from agent.logs import setup_logging
from agent.settings import AgentSettings
setup_logging(AgentSettings().logging)
log = logging.getLogger("agent.worker")
log.info("info line from %d", os.getpid())
log.warning("warning line")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("error line")
print("plain print", flush=True)
sys.stderr.write("raw stderr\\n")
sys.stderr.flush()
time.sleep(3600)
"""


def needs(condition: bool, reason: str) -> None:
    if not condition:
        pytest.skip(reason)


def shared_dir(prefix: str) -> Path:
    """A temporary directory the postgres user can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class Program:
    name: str
    command: Sequence[str]
    environment: dict[str, str]
    user: str | None = None


def supervisord_conf(base: Path, programs: Sequence[Program], *, journal: bool, log_dir: Path) -> Path:
    lines = [
        "[unix_http_server]",
        f"file = {base / 'supervisord.sock'}",
        "[supervisord]",
        "nodaemon = true",
        f"pidfile = {base / 'supervisord.pid'}",
        f"logfile = {log_dir / 'supervisord.log'}",
        f"childlogdir = {log_dir}",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
    ]
    for program in programs:
        output = program_output(program.name, journal=journal, log_dir=log_dir)
        env = {**output.environment, **program.environment}
        lines += [
            f"[program:{program.name}]",
            "command = " + " ".join([*output.command_prefix, *program.command]),
            "startsecs = 1",
            "stopsignal = INT" if program.name == "postgres" else "stopsignal = TERM",
            "environment = " + ",".join(f'{key}="{value}"' for key, value in env.items()),
            *(f"{key} = {value}" for key, value in output.directives.items()),
        ]
        if program.user:
            lines.append(f"user = {program.user}")
    path = base / "supervisord.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def redis_program(base: Path, *, journal: bool) -> Program:
    conf = base / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"unixsocket {base / 'redis.sock'}",
                f"dir {base}",
                'save ""',
                "appendonly no",
                "loglevel notice",
                *redis_log_lines(journal=journal),
            ]
        )
        + "\n"
    )
    return Program("redis", [shutil.which("redis-server") or "/usr/bin/redis-server", str(conf)], {})


def emitter_program(base: Path, name: str, *, journal_setting: str | None = None) -> Program:
    script = base / "emit.py"
    script.write_text(EMITTER)
    env = {"PYTHONPATH": str(ROOT)}
    program = Program(name, [sys.executable, str(script)], env)
    if journal_setting is not None:  # wins over program_output's
        program.environment["APPLIANCE_LOGGING__JOURNAL"] = journal_setting
    return program


class Namespace:
    """A private mount namespace running its own systemd-journald."""

    def __init__(self, state: Path) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", NAMESPACE, "ns", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait(10)
            assert self.proc.stderr is not None
            message = self.proc.stderr.read().strip().splitlines()
            self.close()
            pytest.skip(f"no private journald here: {message[-1] if message else 'it did not start'}")
        self.journald = next(child.pid for child in psutil.Process(self.proc.pid).children())

    def command(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.journald), "-m", "--", *args]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=60, check=False, env=env)

    def entries(self, *args: str) -> list[dict[str, Any]]:
        out = self.run("journalctl", "--no-pager", "-o", "json", *args)
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


class Supervisord:
    def __init__(self, conf: Path, command: Sequence[str] = ()) -> None:
        self.conf = conf
        self.proc = subprocess.Popen(
            [*command, str(SUPERVISORD), "-n", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.rpc = Supervisor(conf.parent / "supervisord.sock")
        wait_until(self.rpc.answers, 30, "supervisord's socket")

    def running(self, *names: str) -> dict[str, int]:
        """Wait until every program is RUNNING; their pids."""

        def all_running() -> bool:
            states = {p.name: p.state for p in self.rpc.processes()}
            assert not {"FATAL", "BACKOFF"} & {states[n] for n in names}, states
            return all(states[n] == "RUNNING" for n in names)

        wait_until(all_running, 60, f"{', '.join(names)} RUNNING")
        return {p.name: p.pid for p in self.rpc.processes()}

    def close(self) -> list[int]:
        pids = [p.pid for p in self.rpc.processes() if p.pid] if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        return [self.proc.pid, *pids]


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    needs(os.geteuid() == 0, "needs root: a mount namespace")
    needs(JOURNALD.exists() and shutil.which("systemd-cat") is not None, "needs systemd-journald and systemd-cat")
    needs(shutil.which("unshare") is not None and shutil.which("nsenter") is not None, "needs unshare and nsenter")
    ns = Namespace(tmp_path / "ns")
    yield ns
    ns.close()
    assert not psutil.pid_exists(ns.journald)


def by_message(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(e["MESSAGE"]): e for e in entries if isinstance(e.get("MESSAGE"), str)}


def test_each_program_reaches_the_journal_under_its_identifier_with_its_level(namespace: Namespace) -> None:
    needs(SUPERVISORD.exists(), "needs supervisor in the venv")
    base = shared_dir("appliance-journal-")
    log_dir = base / "log"
    log_dir.mkdir()
    programs = [
        emitter_program(base, "worker"),
        # "auto": the program finds out itself that its stderr is journald's (through systemd-cat's socket).
        emitter_program(base, "flusher", journal_setting="auto"),
        redis_program(base, journal=True),
    ]
    pg = _postgres(base, journal=True)
    programs.append(pg)
    livekit = _livekit(base)
    if livekit:
        programs.append(livekit)
    supervisord = Supervisord(supervisord_conf(base, programs, journal=True, log_dir=log_dir), namespace.command())
    try:
        pids = supervisord.running(*(p.name for p in programs))

        # Ours: every level, the traceback's lines at the record's level, and the pid supervisord knows
        # (systemd-cat execs the program: supervisord signals the program itself).
        for name in ("worker", "flusher"):

            def lines_of(name: str = name) -> dict[str, dict[str, Any]]:
                return by_message(namespace.entries(f"--identifier=appliance-{name}"))

            wait_until(lambda: "raw stderr" in lines_of(), 20, f"{name}'s lines in the journal")
            lines = lines_of()
            info = lines[f"INFO agent.worker: info line from {pids[name]}"]
            assert info["PRIORITY"] == "6" and info["_PID"] == str(pids[name])
            assert lines["WARNING agent.worker: warning line"]["PRIORITY"] == "4"
            assert lines["ERROR agent.worker: error line"]["PRIORITY"] == "3"
            assert lines["Traceback (most recent call last):"]["PRIORITY"] == "3"
            assert lines["ZeroDivisionError: division by zero"]["PRIORITY"] == "3"
            assert lines["plain print"]["PRIORITY"] == "6"  # unprefixed stdout: info
            assert lines["raw stderr"]["PRIORITY"] == "3"  # unprefixed stderr: an error
            assert all(not m.startswith("<") for m in lines), "a prefix reached the message"

        # What the operator types.
        out = namespace.run("journalctl", "--no-pager", "-o", "cat", "-t", "appliance-worker", "-p", "warning")
        shown = out.stdout.splitlines()
        assert "WARNING agent.worker: warning line" in shown and "ERROR agent.worker: error line" in shown
        assert "ZeroDivisionError: division by zero" in shown
        assert not any("info line" in line or "plain print" in line for line in shown), shown

        # Redis through syslog: its own levels ("ready" is a notice), one copy of each line.
        wait_until(
            lambda: any("ready to accept" in m for m in by_message(namespace.entries("-t", "appliance-redis"))),
            20,
            "Redis's lines in the journal",
        )
        redis_lines = namespace.entries("-t", "appliance-redis")
        ready = [e for e in redis_lines if "ready to accept connections" in str(e.get("MESSAGE"))]
        assert len(ready) == 1 and ready[0]["PRIORITY"] == "5" and ready[0]["_TRANSPORT"] == "syslog"
        assert ready[0]["_PID"] == str(pids["redis"])

        # PostgreSQL through syslog: LOG is info, a failed statement (ERROR) is a warning.
        wait_until(
            lambda: any("ready to accept" in m for m in by_message(namespace.entries("-t", "appliance-postgres"))),
            30,
            "PostgreSQL's lines in the journal",
        )
        with (
            psycopg.connect(host=str(base / "pg"), port=pg_port(base), user="appliance", dbname="postgres") as conn,
            pytest.raises(psycopg.errors.UndefinedTable),
        ):
            conn.execute("SELECT * FROM no_such_table")

        def pg_error() -> dict[str, Any] | None:
            entries = namespace.entries("-t", "appliance-postgres", "-p", "warning")
            return next((e for e in entries if "no_such_table" in str(e.get("MESSAGE"))), None)

        wait_until(pg_error, 20, "PostgreSQL's ERROR in the journal")
        error = pg_error()
        assert error is not None and error["PRIORITY"] == "4" and "ERROR:" in error["MESSAGE"]
        ready_pg = next(
            e for e in namespace.entries("-t", "appliance-postgres") if "ready to accept" in str(e.get("MESSAGE"))
        )
        assert ready_pg["PRIORITY"] == "6" and ready_pg["_PID"] == str(pids["postgres"])
        # One entry per message, its STATEMENT included; no "[1]" counters.
        assert error["MESSAGE"].endswith("appliance@postgres STATEMENT:  SELECT * FROM no_such_table")
        # What PostgreSQL says on stderr before it switches to syslog is a notice, not an error.
        early = [e for e in namespace.entries("-t", "appliance-postgres") if e["_TRANSPORT"] == "stdout"]
        assert early and all(e["PRIORITY"] == "5" for e in early)
        assert not any(str(e["MESSAGE"]).startswith("[") for e in namespace.entries("-t", "appliance-postgres"))

        if livekit:
            # livekit-server through logprefix: zap's levels, its time gone, its pid supervisord's.
            def livekit_started() -> dict[str, Any] | None:
                return next(
                    (
                        e
                        for e in namespace.entries("-t", "appliance-livekit")
                        if "starting LiveKit server" in str(e.get("MESSAGE"))
                    ),
                    None,
                )

            wait_until(livekit_started, 30, "livekit-server's lines in the journal")
            started = livekit_started()
            assert started is not None
            assert started["PRIORITY"] == "6" and started["MESSAGE"].startswith("INFO livekit ")
            debug = [e for e in namespace.entries("-t", "appliance-livekit") if e["PRIORITY"] == "7"]
            assert debug and all(e["MESSAGE"].startswith("DEBUG ") for e in debug)
            assert psutil.Process(pids["livekit"]).exe() == str(livekit_binary().resolve())

        # `appliance logs` finds the journal ("auto") and shows one program's lines, or everyone's.
        config = base / "appliance.toml"
        config.write_text(f'[control]\nlog_dir = "{log_dir}"\n')
        env = {**os.environ, "APPLIANCE_CONFIG": str(config)}
        env.pop("APPLIANCE_LOGGING__JOURNAL", None)
        out = namespace.run(sys.executable, "-m", "appliance.cli", "logs", "worker", "-n", "50", env=env)
        assert out.returncode == 0, out.stderr
        assert "appliance-worker" in out.stdout and "WARNING agent.worker: warning line" in out.stdout
        assert "appliance-flusher" not in out.stdout
        out = namespace.run(sys.executable, "-m", "appliance.cli", "logs", "-n", "1000", "--since", "-10m", env=env)
        for identifier in ("appliance-worker", "appliance-flusher", "appliance-redis", "appliance-postgres"):
            assert identifier in out.stdout
        # In journal mode supervisord's files hold nothing (only systemd-cat's own errors would land there).
        assert (log_dir / "worker.log").read_text() == ""
    finally:
        # logprefix's filter is nobody's child: it must end with livekit-server, at the end of its pipe.
        filters = [
            proc.pid
            for proc in psutil.process_iter(["cmdline"])
            if "appliance.logprefix" in (proc.info["cmdline"] or []) and str(base) in " ".join(proc.info["cmdline"])
        ]
        gone = supervisord.close() + filters
        shutil.rmtree(base, ignore_errors=True)
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in gone), 10, "every process of the test gone")
    assert not livekit or filters


def test_without_a_journal_each_program_writes_its_file_and_appliance_logs_reads_it(tmp_path: Path) -> None:
    needs(SUPERVISORD.exists(), "needs supervisor in the venv")
    base = shared_dir("appliance-files-")
    log_dir = base / "log"
    log_dir.mkdir()
    programs = [emitter_program(base, "worker"), redis_program(base, journal=False)]
    supervisord = Supervisord(supervisord_conf(base, programs, journal=False, log_dir=log_dir))
    try:
        pids = supervisord.running("worker", "redis")
        wait_until(lambda: "raw stderr" in (log_dir / "worker.log").read_text(), 20, "the worker's file")
        wait_until(lambda: "ready to accept" in (log_dir / "redis.log").read_text(), 20, "Redis's file")
        worker_lines = (log_dir / "worker.log").read_text().splitlines()
        assert worker_lines[0].endswith(f"INFO agent.worker: info line from {pids['worker']}")
        assert not worker_lines[0].startswith("<")

        config = tmp_path / "appliance.toml"
        config.write_text(f'[logging]\njournal = false\n[control]\nlog_dir = "{log_dir}"\n')
        env = {**os.environ, "APPLIANCE_CONFIG": str(config)}
        env.pop("APPLIANCE_LOGGING__JOURNAL", None)

        def logs(*args: str) -> list[str]:
            out = subprocess.run(
                [sys.executable, "-m", "appliance.cli", "logs", *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=True,
            )
            return out.stdout.splitlines()

        assert logs("worker", "-n", "2") == ["plain print", "raw stderr"]
        everything = logs("-n", "100")
        assert any(line.startswith("redis | ") and "ready to accept" in line for line in everything)
        assert any(line.startswith("worker | ") and "warning line" in line for line in everything)
        assert any(line.startswith("supervisord | ") and "spawned: 'worker'" in line for line in everything)
        recent = logs("--since", "-5m")
        assert any("error line" in line for line in recent) and any("ready to accept" in line for line in recent)
        assert logs("redis", "--since", "-1h") != []
        assert [line for line in logs("--since", "now") if "ready to accept" in line] == []
    finally:
        gone = supervisord.close()
        shutil.rmtree(base, ignore_errors=True)
    assert not any(psutil.pid_exists(pid) for pid in gone)


def _postgres(base: Path, *, journal: bool) -> Program:
    data = base / "pg"
    data.mkdir()
    shutil.chown(data, "postgres")
    bindir = pg_bindir()
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "appliance", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
        check=True,
        user="postgres",
        capture_output=True,
        cwd=base,
        timeout=120,
    )
    port = free_port()
    (base / "pg.port").write_text(str(port))
    with (data / "postgresql.conf").open("a") as fh:
        fh.write(
            "\n".join(
                [
                    f"port = {port}",
                    "listen_addresses = ''",
                    f"unix_socket_directories = '{data}'",
                    *postgres_log_lines(journal=journal),
                ]
            )
            + "\n"
        )
    return Program("postgres", [str(bindir / "postgres"), "-D", str(data)], {}, user="postgres")


def pg_port(base: Path) -> int:
    return int((base / "pg.port").read_text())


def _livekit(base: Path) -> Program | None:
    try:
        executable = livekit_binary()
    except RuntimeError:
        return None
    conf = base / "livekit.yaml"
    conf.write_text(
        f"port: {free_port()}\nbind_addresses: [127.0.0.1]\n"
        f"rtc:\n  node_ip: 127.0.0.1\n  use_external_ip: false\n  udp_port: {free_udp_port()}\n  tcp_port: 0\n"
        "keys:\n  devkey: secretsecretsecretsecretsecretsecret\nlogging:\n  level: debug\n"
    )
    return Program("livekit", [str(executable), "--config", str(conf)], {"PYTHONPATH": str(ROOT)})
