"""appliance status against a real supervisord (with the event listener, the real flusher and a trivial program),
the real Redis and PostgreSQL: healthy, a kill -9 counted and recovered, a stop through XML-RPC, a crash loop,
supervisord gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.settings import AgentSettings
from appliance.events import events_file
from appliance.layout import Layout
from appliance.settings import ApplianceSettings
from appliance.status import DEGRADED, HEALTHY, NOT_RUNNING, Report, collect
from appliance.supervisor import Supervisor
from harness.processes import settings_env
from harness.servers import PostgresServer, RedisServer, free_port, wait_until
from tests.conftest import fresh_database, make_settings

BIN = Path(sys.executable).parent
PROGRAMS = ("events", "flusher", "sleeper")


class Supervised:
    """supervisord in a temporary directory, in the foreground, as a child of the test."""

    def __init__(self, settings: AgentSettings, workdir: Path) -> None:
        self.dir = workdir
        self.run_dir = workdir / "run"
        self.run_dir.mkdir()
        self.crash_flag = workdir / "crash"
        self.settings = ApplianceSettings.model_validate(
            {
                **{name: getattr(settings, name) for name in AgentSettings.model_fields},
                "control": {
                    "run_dir": self.run_dir,
                    "data_dir": workdir,
                    "log_dir": workdir,
                    "alt_status_port": free_port(),
                },
                "worker": {"status_port": free_port()},
            }
        )
        self.config_file = workdir / "config" / "appliance.toml"
        # The flusher connects as its own Redis user, as the appliance renders it.
        self.env = settings_env(self.settings, workdir / "config") | {"APPLIANCE_REDIS__ACL_USER": "flusher"}
        self.layout = Layout.of(self.settings, self.config_file)
        self.conf = workdir / "supervisord.conf"
        self.conf.write_text(self._conf())
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: list[int] = []

    def _conf(self) -> str:
        run = self.run_dir
        return f"""\
[unix_http_server]
file = {run}/supervisord.sock
chmod = 0700

[supervisord]
nodaemon = true
pidfile = {run}/supervisord.pid
logfile = {self.dir}/supervisord.log
childlogdir = {self.dir}
loglevel = warn

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[eventlistener:events]
command = {sys.executable} -m appliance.events {events_file(run)}
events = PROCESS_STATE
priority = 1
autorestart = true
stderr_logfile = {self.dir}/events.log

[program:flusher]
command = {sys.executable} -m agent.flusher
priority = 40
startsecs = 1
autorestart = true
stopwaitsecs = 30
redirect_stderr = true
stdout_logfile = {self.dir}/flusher.log

; sleeps, or exits at once while the crash flag exists (then it crash-loops into FATAL)
[program:sleeper]
command = /bin/sh -c '[ -e {self.crash_flag} ] && exit 3; exec sleep 100000'
priority = 50
startsecs = 1
startretries = 2
autorestart = true
stopwaitsecs = 5
"""

    def start(self) -> Supervised:
        self.proc = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(self.conf)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self.ready, 60, "every program RUNNING, the listener's file and the flusher's figures")
        return self

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.layout.supervisor_socket)

    def states(self) -> dict[str, tuple[str, int]]:
        return {p.name: (p.state, p.pid) for p in self.supervisor.processes()}

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "supervisord exited"
        if not self.layout.supervisor_socket.exists():
            return False
        states = self.states()
        self.children = [pid for _, pid in states.values() if pid]
        return (
            all(states.get(name, ("",))[0] == "RUNNING" for name in PROGRAMS)
            and events_file(self.run_dir).exists()
            and collect(self.settings, self.layout).flusher.ok
        )

    def collect(self) -> Report:
        return collect(self.settings, self.layout)

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.children += [pid for _, pid in self.states().values() if pid]
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        gone = [pid for pid in self.children if not psutil.pid_exists(pid)]
        assert gone == self.children, "supervisord's programs outlived it"


@pytest.fixture
def supervised(pg: PostgresServer, redis_server: RedisServer) -> Iterator[Supervised]:
    # A short directory: a unix socket path is limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="appl-status-") as workdir:
        running = Supervised(make_settings(redis_server, pg, fresh_database(pg), Path(workdir)), Path(workdir))
        try:
            yield running.start()
        finally:
            running.close()


def program(report: Report, name: str) -> dict[str, object]:
    return next(p.model_dump() for p in report.programs if p.name == name)


def test_all_running_is_healthy(supervised: Supervised) -> None:
    report = supervised.collect()
    assert (report.exit_code, report.state, report.problems) == (HEALTHY, "healthy", [])
    assert report.verdict == "healthy: 3 programs running, 0 rooms"
    for name in PROGRAMS:
        found = program(report, name)
        assert found["state"] == "RUNNING"
        assert found["restarts"] == 0 and found["crash_loop"] is False
        assert isinstance(found["pss_mb"], float) and found["pss_mb"] > 0
    assert report.supervisord.pid == supervised.proc.pid if supervised.proc else False
    assert report.redis.ok and report.redis.stream_length == 0
    assert report.postgres.ok and report.postgres.connections
    assert report.flusher.ok and report.flusher.lag_ms is not None and report.flusher.lag_ms < 1000
    assert report.workers == []  # no worker program here: none probed

    # The command, as an operator runs it: the same data as JSON, exit 0; no secret in it.
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "status", "--json"],
        env=supervised.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == HEALTHY, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "healthy" and [p["name"] for p in data["programs"]] == sorted(PROGRAMS)
    for secret in (supervised.settings.redis.password, supervised.settings.postgres.password):
        assert secret is not None and secret.get_secret_value() not in result.stdout
    human = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "status"], env=supervised.env, capture_output=True, text=True
    )
    assert human.returncode == HEALTHY
    assert human.stdout.splitlines()[0] == "healthy: 3 programs running, 0 rooms"


@pytest.mark.parametrize("name", PROGRAMS)
def test_kill_9_comes_back_with_a_new_pid_and_the_restart_counted(supervised: Supervised, name: str) -> None:
    before = supervised.states()[name][1]
    os.kill(before, signal.SIGKILL)

    def back() -> bool:
        state, pid = supervised.states()[name]
        return state == "RUNNING" and pid != before

    wait_until(back, 30, f"{name} RUNNING again with a new pid")
    # the listener's file is written right after each event: wait for the RUNNING one to be counted
    wait_until(lambda: program(supervised.collect(), name)["restarts"] == 1, 10, f"{name}'s restart counted")
    report = supervised.collect()
    found = program(report, name)
    assert found["pid"] != before
    assert (found["restarts"], found["unexpected_exits"], found["crash_loop"]) == (1, 1, False)
    assert not psutil.pid_exists(before)
    wait_until(lambda: supervised.collect().exit_code == HEALTHY, 15, "healthy again (one kill is not a crash loop)")


def test_a_program_stopped_through_xmlrpc_is_degraded(supervised: Supervised) -> None:
    assert supervised.supervisor.stop("sleeper", timeout_s=10)
    report = supervised.collect()
    assert (report.exit_code, report.state) == (DEGRADED, "degraded")
    assert report.problems == ["sleeper is STOPPED"]
    assert report.verdict == "degraded: sleeper is STOPPED"
    assert program(report, "sleeper")["restarts"] == 0  # an operator's stop is no crash
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "status"], env=supervised.env, capture_output=True, text=True
    )
    assert result.returncode == DEGRADED
    supervised.supervisor.start("sleeper")
    assert supervised.collect().exit_code == HEALTHY


def test_a_crash_loop_is_flagged(supervised: Supervised) -> None:
    supervised.crash_flag.touch()
    os.kill(supervised.states()["sleeper"][1], signal.SIGKILL)
    wait_until(lambda: supervised.states()["sleeper"][0] == "FATAL", 30, "sleeper FATAL after its retries")
    wait_until(lambda: program(supervised.collect(), "sleeper")["crash_loop"], 10, "the crash loop counted")
    report = supervised.collect()
    assert report.exit_code == DEGRADED
    found = program(report, "sleeper")
    assert found["unexpected_exits"] == 1  # the kill; the quick exits after it are BACKOFFs
    assert report.problems[0].startswith("sleeper is crash-looping")
    assert "sleeper is FATAL" in report.problems[1]


def test_supervisord_gone_is_not_running(supervised: Supervised) -> None:
    supervised.close()
    assert not supervised.layout.supervisor_socket.exists()
    report = supervised.collect()
    assert (report.exit_code, report.state) == (NOT_RUNNING, "not running")
    assert (
        report.verdict
        == f"not running: supervisord is not running (no socket at {supervised.layout.supervisor_socket})"
    )
    assert report.redis.ok and report.postgres.ok  # the stores are not supervisord's here: still shown
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "status"], env=supervised.env, capture_output=True, text=True
    )
    assert result.returncode == NOT_RUNNING
