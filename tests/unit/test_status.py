"""appliance status without servers: the verdict and exit-code rules, the event listener's counts and protocol."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from appliance import doctor, events
from appliance.cli import main
from appliance.cli.status import human
from appliance.layout import Layout
from appliance.masking import secret_values
from appliance.probes import Flusher, Postgres, Redis, Room, Supervisord, Worker
from appliance.settings import ApplianceSettings
from appliance.status import (
    DEGRADED,
    HEALTHY,
    NOT_RUNNING,
    UNKNOWN,
    Program,
    Report,
    collect,
    judge,
    scrub,
    verdict_line,
)
from harness.servers import free_port

UP = Supervisord(ok=True, socket="/run/appliance/supervisord.sock", pid=1)


def running(name: str, **fields: object) -> Program:
    values: dict[str, object] = {"state": "RUNNING", "pid": 100, "uptime_s": 60, "restarts": 0}
    return Program.model_validate({"name": name, **values, **fields})


def stopped(name: str, state: str = "STOPPED") -> Program:
    return Program(name=name, state=state, pid=None, uptime_s=None, restarts=0)


def whole(*, worker: str = "RUNNING", alt: str = "STOPPED") -> list[Program]:
    programs = [running(name) for name in ("events", "redis", "postgres", "livekit", "flusher")]
    for name, state in (("worker", worker), ("worker-alt", alt)):
        programs.append(running(name) if state == "RUNNING" else stopped(name, state))
    return programs


def registered(program: str = "worker", **fields: object) -> Worker:
    values: dict[str, object] = {"port": 8082, "ok": True, "worker_id": "AW_x", "registered": True}
    return Worker.model_validate({"program": program, **values, **fields})


REDIS = Redis(ok=True, used_mb=10, maxmemory_mb=2048, used_ratio=0.005, evicted_keys=0, stream_length=0, pending=0)
PG = Postgres(ok=True, size_mb=8, connections=5, max_connections=100)
FLUSHER = Flusher(ok=True, lag_ms=3, backlog=0)


def verdict(
    programs: list[Program] | None = None,
    workers: list[Worker] | None = None,
    redis: Redis = REDIS,
    postgres: Postgres = PG,
    flusher: Flusher = FLUSHER,
    supervisord: Supervisord = UP,
    **flags: Any,
) -> tuple[int, list[str]]:
    return judge(
        supervisord,
        whole() if programs is None else programs,
        [registered()] if workers is None else workers,
        redis,
        postgres,
        flusher,
        **flags,
    )


def test_everything_running_is_healthy() -> None:
    assert verdict() == (HEALTHY, [])


def test_the_idle_worker_of_the_pair_is_expected_to_be_stopped() -> None:
    assert verdict(whole(worker="STOPPED", alt="RUNNING"), [registered("worker-alt")]) == (HEALTHY, [])
    # mid graceful restart: both run, the old one drains
    both = [registered("worker", draining=True), registered("worker-alt", port=8084)]
    assert verdict(whole(worker="RUNNING", alt="RUNNING"), both) == (HEALTHY, [])


@pytest.mark.parametrize("name", ["redis", "postgres", "livekit", "flusher", "events"])
def test_a_program_not_running_is_degraded(name: str) -> None:
    programs = [stopped(name) if p.name == name else p for p in whole()]
    code, problems = verdict(programs)
    assert code == DEGRADED
    assert problems[0].startswith(f"{name} is STOPPED")


def test_no_worker_running_is_degraded() -> None:
    code, problems = verdict(whole(worker="STOPPED"), [])
    assert code == DEGRADED
    assert problems == ["worker is STOPPED", "worker-alt is STOPPED"]


def test_a_fatal_idle_worker_is_degraded_even_while_the_other_runs() -> None:
    code, problems = verdict(whole(alt="FATAL"))
    assert code == DEGRADED
    assert problems == ["worker-alt is FATAL"]


def test_crash_loop_is_degraded_even_while_running() -> None:
    programs = [running("flusher", crash_loop=True, unexpected_exits=4) if p.name == "flusher" else p for p in whole()]
    code, problems = verdict(programs)
    assert code == DEGRADED
    assert "flusher is crash-looping" in problems[0]


def test_worker_problems() -> None:
    assert verdict(workers=[registered(registered=False, worker_id="unregistered")])[0] == DEGRADED
    assert verdict(workers=[registered(ok=False, error="Connection refused")])[0] == DEGRADED
    code, problems = verdict(workers=[registered(draining=True)])
    assert code == DEGRADED
    assert problems == ["no worker takes new rooms (every running worker is draining or unregistered)"]


def test_store_problems() -> None:
    near_cap = REDIS.model_copy(update={"used_mb": 1900, "used_ratio": 0.93})
    assert verdict(redis=near_cap)[0] == DEGRADED
    assert verdict(redis=Redis(ok=False, error="Connection refused"), flusher=Flusher(ok=False))[0] == DEGRADED
    assert verdict(postgres=Postgres(ok=False, error="Connection refused"))[0] == DEGRADED
    assert verdict(postgres=PG.model_copy(update={"connections": 95}))[0] == DEGRADED
    code, problems = verdict(flusher=FLUSHER.model_copy(update={"lag_ms": 45_000}))
    assert code == DEGRADED
    assert problems == ["flusher: lagging 45 s behind (is PostgreSQL slow or down?)"]
    assert verdict(flusher=Flusher(ok=False, error="publishes no figures"))[0] == DEGRADED
    # no flusher program (a test supervisord): its figures are not judged
    without = [p for p in whole() if p.name != "flusher"]
    assert verdict(without, flusher=Flusher(ok=False, error="publishes no figures")) == (HEALTHY, [])
    # an uncapped Redis is shown as such, not judged
    assert verdict(redis=REDIS.model_copy(update={"maxmemory_mb": None, "used_ratio": None}))[0] == HEALTHY


def test_missing_restart_counts_are_degraded() -> None:
    code, problems = verdict(events_missing=True)
    assert code == DEGRADED
    assert "event listener" in problems[0]


def test_supervisord_down_is_not_running_and_odd_answers_unknown() -> None:
    down = Supervisord(ok=False, socket="/x.sock", error="supervisord is not running (no socket at /x.sock)")
    assert verdict([], [], supervisord=down, supervisor_down=True) == (NOT_RUNNING, [down.error])
    odd = Supervisord(ok=False, socket="/x.sock", error="permission denied on /x.sock")
    assert verdict([], [], supervisord=odd) == (UNKNOWN, [odd.error])


def test_verdict_line() -> None:
    rooms = [registered(rooms=[Room(room="a"), Room(room="b")])]
    assert verdict_line(HEALTHY, [], whole(), rooms) == "healthy: 6 programs running, 2 rooms"
    assert verdict_line(DEGRADED, ["redis is STOPPED", "x"], [], []) == "degraded: redis is STOPPED (+1 more)"
    assert verdict_line(NOT_RUNNING, ["no socket at /x"], [], []) == "not running: no socket at /x"


# -- the event listener's counts --------------------------------------------------------------------------------


def feed(record: events.Events, *transitions: str, now: float = 1000.0) -> None:
    for transition in transitions:
        name, _, rest = transition.partition(" ")
        headers = dict(part.split(":") for part in rest.split())
        record.record(f"PROCESS_STATE_{name}", {"processname": "worker", "groupname": "worker", **headers}, now)


def test_a_kill_counts_one_restart_and_one_unexpected_exit() -> None:
    record = events.Events()
    feed(record, "STARTING from_state:STOPPED tries:0", "RUNNING from_state:STARTING pid:10")
    assert record.programs["worker"].restarts == 0
    feed(
        record,
        "EXITED from_state:RUNNING expected:0 pid:10",
        "STARTING from_state:EXITED tries:0",
        "RUNNING from_state:STARTING pid:11",
    )
    counts = record.programs["worker"]
    assert (counts.restarts, counts.unexpected_exits, counts.pid) == (1, 1, 11)
    assert not counts.crash_looping(now=1000.0)


def test_operator_stop_and_start_is_not_a_restart() -> None:
    record = events.Events()
    feed(
        record,
        "RUNNING from_state:STARTING pid:10",
        "STOPPING from_state:RUNNING pid:10",
        "STOPPED from_state:STOPPING pid:10",
        "STARTING from_state:STOPPED tries:0",
        "EXITED from_state:RUNNING expected:1 pid:12",  # an expected exit, restarted by autorestart
        "STARTING from_state:EXITED tries:0",
    )
    counts = record.programs["worker"]
    assert (counts.restarts, counts.unexpected_exits, counts.recent) == (1, 0, [])


def test_crash_loop_is_n_bad_events_within_the_window() -> None:
    record = events.Events()
    feed(record, "BACKOFF from_state:STARTING tries:1", now=0.0)
    feed(record, "STARTING from_state:BACKOFF tries:1", "BACKOFF from_state:STARTING tries:2", now=100.0)
    counts = record.programs["worker"]
    assert counts.restarts == 1
    assert not counts.crash_looping(now=100.0)
    feed(record, "FATAL from_state:BACKOFF", now=200.0)
    assert counts.crash_looping(now=200.0)
    assert not counts.crash_looping(now=200.0 + events.CRASH_LOOP_WINDOW_S)  # the first one aged out
    feed(record, *["EXITED from_state:RUNNING expected:0"] * 30, now=300.0)
    assert len(counts.recent) == events.RECENT_KEPT
    assert counts.unexpected_exits == 30


def test_counts_carry_on_for_the_same_supervisord_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = events.events_file(run_dir)
    record = events.start(path, supervisord_pid=42, now=1.0)
    feed(record, "EXITED from_state:RUNNING expected:0", "STARTING from_state:EXITED")
    events.save(record, path)
    assert events.start(path, supervisord_pid=42, now=2.0).programs["worker"].restarts == 1
    assert events.start(path, supervisord_pid=43, now=2.0).programs == {}
    path.write_text("{torn")
    assert events.load(path) is None
    assert [p.name for p in run_dir.iterdir()] == ["events.json"]  # no temporary file left behind


def envelope(eventname: str, payload: str, serial: int = 1) -> str:
    header = (
        f"ver:3.0 server:supervisor serial:{serial} pool:events poolserial:{serial} eventname:{eventname}"
        f" len:{len(payload)}\n"
    )
    return header + payload


def test_listener_protocol_in_process(tmp_path: Path) -> None:
    """READY before each event, RESULT 2\\nOK after it, also for events it does not count."""
    path = tmp_path / "events.json"
    stdin = io.StringIO(
        envelope("PROCESS_STATE_EXITED", "processname:redis groupname:redis from_state:RUNNING expected:0 pid:7", 1)
        + envelope("PROCESS_STATE_STARTING", "processname:redis groupname:redis from_state:EXITED tries:0", 2)
        + envelope("TICK_5", "when:1201063880", 3)
    )
    stdout = io.StringIO()
    events.serve(path, stdin, stdout, supervisord_pid=99)
    assert stdout.getvalue() == "READY\nRESULT 2\nOK" * 3 + "READY\n"
    record = events.load(path)
    assert record is not None
    assert record.supervisord_pid == 99
    assert (record.programs["redis"].restarts, record.programs["redis"].unexpected_exits) == (1, 1)


def test_listener_protocol_as_supervisord_runs_it(tmp_path: Path) -> None:
    """The module as a process over pipes: it writes the file at start and after every event, and OKs each."""
    path = tmp_path / "events.json"
    with subprocess.Popen(
        [sys.executable, "-m", "appliance.events", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline() == "READY\n"
            assert events.load(path) is not None  # written before the first event
            fatal = envelope("PROCESS_STATE_FATAL", "processname:flusher groupname:flusher from_state:BACKOFF")
            proc.stdin.write(fatal)
            proc.stdin.flush()
            assert proc.stdout.read(len("RESULT 2\nOK")) == "RESULT 2\nOK"
            assert proc.stdout.readline() == "READY\n"
            record = events.load(path)
            assert record is not None
            assert record.programs["flusher"].fatals == 1
            assert record.supervisord_pid == os.getpid()  # its parent: here, this test
            proc.stdin.close()
            assert proc.wait(10) == 0  # supervisord closing the pipe ends it cleanly
        finally:
            if proc.poll() is None:
                proc.kill()


def test_listener_without_its_file_argument_says_how_to_run_it() -> None:
    result = subprocess.run([sys.executable, "-m", "appliance.events"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "usage: python -m appliance.events FILE" in result.stderr


# -- secrets, collect() with nothing running, the command ---------------------------------------------------------


def test_secrets_are_masked_wherever_they_appear() -> None:
    settings = ApplianceSettings.model_validate(
        {"redis": {"password": "red-secret"}, "postgres": {"password": 'pg"secret'}}
    )
    assert set(secret_values(settings)) == {"red-secret", 'pg"secret'}
    report = Report(
        state="degraded",
        exit_code=1,
        verdict='degraded: redis: bad password red-secret and pg"secret',
        problems=["red-secret"],
        supervisord=UP,
        programs=[],
        workers=[],
        redis=Redis(ok=False, error="auth red-secret failed"),
        postgres=PG,
        flusher=FLUSHER,
        collected_at=0,
    )
    text = scrub(report, secret_values(settings)).model_dump_json()
    assert "red-secret" not in text and "pg" + '\\"secret' not in text
    assert text.count("**********") == 4


def nothing_running(tmp_path: Path) -> ApplianceSettings:
    return ApplianceSettings.model_validate(
        {
            "control": {"run_dir": str(tmp_path / "run"), "alt_status_port": free_port()},
            "redis": {"port": free_port(), "password": "s3cret-redis"},
            "postgres": {"port": free_port(), "password": "s3cret-pg"},
            "worker": {"status_port": free_port()},
        }
    )


def test_collect_with_nothing_running_is_not_running_quickly(tmp_path: Path) -> None:
    settings = nothing_running(tmp_path)
    started = time.monotonic()
    report = collect(settings, Layout.of(settings, tmp_path / "appliance.toml"))
    assert time.monotonic() - started < 6
    assert (report.exit_code, report.state) == (NOT_RUNNING, "not running")
    assert report.verdict.startswith("not running: ")
    assert str(tmp_path / "run" / "supervisord.sock") in report.verdict
    assert not report.redis.ok and not report.postgres.ok
    assert report.workers == []
    assert "s3cret" not in report.model_dump_json()
    assert human(report)[0] == report.verdict


def test_a_socket_file_nobody_listens_on_is_not_running(tmp_path: Path) -> None:
    import socket

    settings = nothing_running(tmp_path)
    (tmp_path / "run").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "run" / "supervisord.sock"))  # bound, never listening: connections refused
        report = collect(settings, Layout.of(settings, tmp_path / "appliance.toml"))
    assert report.exit_code == NOT_RUNNING


def test_command_exit_code_json_and_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = nothing_running(tmp_path)
    monkeypatch.setenv("APPLIANCE_CONTROL__RUN_DIR", str(settings.control.run_dir))
    monkeypatch.setenv("APPLIANCE_REDIS__PORT", str(settings.redis.port))
    monkeypatch.setenv("APPLIANCE_POSTGRES__PORT", str(settings.postgres.port))
    result = CliRunner().invoke(main, ["status", "--json"])
    assert result.exit_code == NOT_RUNNING, result.output
    data = json.loads(result.stdout)
    assert data["exit_code"] == NOT_RUNNING and data["state"] == "not running"
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == NOT_RUNNING
    assert result.stdout.startswith("not running: ")
    assert "redis:    DOWN" in result.stdout
    help_text = CliRunner().invoke(main, ["status", "--help"]).stdout
    for line in ("0  healthy", "1  degraded", "3  not running", "4  unknown"):
        assert line in help_text


def test_watch_refreshes_in_place_until_ctrl_c(tmp_path: Path) -> None:
    """A real `appliance status --watch`: frames drawn over each other (no screen clear between them, so no
    flicker), and Ctrl-C ends it with exit 0."""
    import os
    import pty
    import signal
    import subprocess
    import sys
    import time

    settings = nothing_running(tmp_path)
    (tmp_path / "appliance.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")} | {
        "APPLIANCE_CONFIG": str(tmp_path / "appliance.toml"),
        "APPLIANCE_CONTROL__RUN_DIR": str(settings.control.run_dir),
        "APPLIANCE_REDIS__PORT": str(settings.redis.port),
        "APPLIANCE_POSTGRES__PORT": str(settings.postgres.port),
    }
    argv = [sys.executable, "-m", "appliance.cli", "status", "--watch", "--interval", "0.2"]
    # On a terminal, as an operator runs it (click leaves escape sequences out of a pipe).
    terminal, its_side = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdout=its_side, stderr=subprocess.PIPE)
    os.close(its_side)
    out = b""
    deadline = time.monotonic() + 60
    while out.count(b"\x1b[H") < 4 and time.monotonic() < deadline:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:
            break  # it exited: the assertions below say how
        out += chunk
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    os.close(terminal)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    frames = text.split("\x1b[H")[1:-1]  # the last one may be cut short by Ctrl-C
    assert len(frames) >= 3 and all(f.startswith("not running: ") for f in frames), text[-500:]
    assert text.count("\x1b[2J") == 1  # the screen is cleared once, before the first frame
    assert CliRunner().invoke(main, ["status", "--watch", "--json"]).exit_code == 2


def test_unreadable_settings_are_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_REDIS__PORT", "not-a-port")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == UNKNOWN
    assert "unknown: redis.port" in result.stderr


def test_human_view_of_a_healthy_report() -> None:
    rooms = [Room(room="support-1", conversation="c1", pid=200, pss_mb=80.5, uss_mb=60.1)]
    report = Report(
        state="healthy",
        exit_code=0,
        verdict="healthy: 6 programs running, 1 room",
        problems=[],
        supervisord=UP,
        programs=[*whole()[:-1], running("flusher", crash_loop=True, restarts=None)],
        workers=[registered(rooms=rooms)],
        redis=REDIS,
        postgres=PG,
        flusher=FLUSHER,
        collected_at=0,
    )
    lines = human(report)
    assert lines[0] == report.verdict
    assert lines[2].split() == ["PROGRAM", "STATE", "PID", "UPTIME", "PSS", "MB", "PROCS", "RESTARTS"]
    assert lines[3].split()[:4] == ["events", "RUNNING", "100", "1m00s"]
    assert any(line.endswith("CRASH-LOOP") and "?" in line for line in lines)
    assert any("support-1" in line and "80.5" in line for line in lines)
    assert "redis:    10.0 MB used of 2048 MB (0%), 0 evicted keys, stream backlog 0 (0 pending)" in lines


def test_a_busy_worker_shows_its_five_largest_rooms_and_sums_the_rest() -> None:
    rooms = [Room(room=f"room-{i}", pid=200 + i, pss_mb=float(10 + i)) for i in range(8)]
    report = Report(
        state="healthy", exit_code=0, verdict="healthy: 6 programs running, 8 rooms", problems=[], supervisord=UP,
        programs=whole(), workers=[registered(rooms=rooms)], redis=REDIS, postgres=PG, flusher=FLUSHER,
        collected_at=0,
    )  # fmt: skip
    lines = human(report)
    shown = [line.split()[0] for line in lines if line.strip().startswith("room-")]
    assert shown == ["room-7", "room-6", "room-5", "room-4", "room-3"]
    assert "  and 3 more rooms, 33.0 MB PSS in all" in lines


# -- appliance doctor's checks -------------------------------------------------------------------------------------


def doctor_settings(tmp_path: Path, **control: object) -> ApplianceSettings:
    return ApplianceSettings.model_validate(
        {
            "control": {"run_dir": str(tmp_path / "run"), "data_dir": str(tmp_path / "data"), **control},
            "worker": {"health_port": free_port(), "status_port": free_port()},
            "redis": {"port": free_port()},
            "postgres": {"port": free_port()},
            "livekit_server": {"port": free_port(), "rtc_tcp_port": free_port(), "rtc_udp_port": free_port()},
        }
    )


def test_doctor_check_lines() -> None:
    assert doctor.passed("disk", "3 GiB free").line() == "ok    disk: 3 GiB free"
    line = doctor.failed("secrets", "/etc/appliance/secrets.toml is mode 0644", "chmod 0600 x").line()
    assert line == "FAIL  secrets: /etc/appliance/secrets.toml is mode 0644 -> fix: chmod 0600 x"


def test_doctor_without_a_config_file_or_with_a_bad_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_CONFIG", str(tmp_path / "missing.toml"))
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"FAIL  config: {tmp_path / 'missing.toml'} not found -> fix: install")
    monkeypatch.setenv("APPLIANCE_CONFIG", str(tmp_path / "appliance.toml"))
    (tmp_path / "appliance.toml").write_text("[redis]\nport = 0\n")
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1
    assert result.stdout.startswith("FAIL  config: redis.port: Input should be greater than or equal to 1")
    assert len(result.stdout.splitlines()) == 1  # nothing else can be checked without settings


def test_doctor_secrets_mode_and_owner(tmp_path: Path) -> None:
    settings = doctor_settings(tmp_path, user="root")
    layout = Layout.of(settings, tmp_path / "appliance.toml")
    [missing] = doctor.check_secrets(settings, layout)
    assert not missing.ok and "appliance install" in missing.fix
    layout.secrets_file.write_text("")
    layout.secrets_file.chmod(0o644)
    [loose] = doctor.check_secrets(settings, layout)
    assert (loose.ok, loose.fix) == (False, f"chmod 0600 {layout.secrets_file}")
    layout.secrets_file.chmod(0o600)
    if os.geteuid() == 0:
        [ok] = doctor.check_secrets(settings, layout)
        assert ok.ok, ok.line()
    [foreign] = doctor.check_secrets(doctor_settings(tmp_path, user="nobody"), layout)
    assert not foreign.ok and foreign.fix == f"chown nobody: {layout.secrets_file}"


def test_doctor_ports_free_ours_or_taken(tmp_path: Path) -> None:
    import socket

    settings = doctor_settings(tmp_path)
    layout = Layout.of(settings, tmp_path / "appliance.toml")
    [free] = doctor.check_ports(settings, layout)
    assert free.ok, free.line()
    with socket.socket() as held:
        held.bind(("127.0.0.1", settings.redis.port))
        held.listen()
        [taken] = doctor.check_ports(settings, layout)
        assert not taken.ok
        assert f"tcp port {settings.redis.port} (redis.port) is in use by pid {os.getpid()}" in taken.detail
        assert taken.fix == f"stop that process, or set redis.port to a free port in {layout.config_file}"
        # the same socket held by "our supervisord" (here: this process, as its pidfile says) is ours
        layout.run_dir.mkdir()
        layout.supervisord_pid.write_text(f"{os.getpid()}\n")
        [ours] = doctor.check_ports(settings, layout)
        assert ours.ok, ours.line()


def test_doctor_pure_helpers(tmp_path: Path) -> None:
    assert doctor.http_url("ws://127.0.0.1:7880") == "http://127.0.0.1:7880/"
    assert doctor.http_url("wss://lk.example.com/") == "https://lk.example.com/"
    redis_says = [sys.executable, "-c", "print('Redis server v=7.2.4 sha=0')"]
    assert doctor.version_of(redis_says, r"v=(\d+\.\d+(?:\.\d+)?)") == (7, 2, 4)
    assert doctor.version_of(["/nonexistent/redis-server"], r"v=(\d+)") is None
    settings = doctor_settings(tmp_path)
    [disk] = doctor.check_disk(settings, Layout.of(settings, tmp_path / "appliance.toml"))
    assert disk.ok and "GiB free" in disk.detail


def test_doctor_with_nothing_running_fails_with_fixes(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    settings = doctor_settings(tmp_path, user="root")
    checks = doctor.doctor(config, lambda: settings)
    by_name = {check.name: check for check in checks}
    assert by_name["config"].ok
    assert not by_name["supervisord"].ok and "`appliance start`" in by_name["supervisord"].fix
    assert not by_name["redis"].ok and not by_name["postgres"].ok and not by_name["livekit"].ok
    assert not by_name["worker"].ok
    assert all(check.fix for check in checks if not check.ok)


def test_livekit_unreachable_is_degraded_and_named() -> None:
    from appliance.probes import LiveKit

    down = LiveKit(ok=False, url="wss://lk.example", error="unreachable (connection refused)")
    code, problems = verdict(livekit=down)
    assert (code, problems) == (DEGRADED, ["livekit at wss://lk.example: unreachable (connection refused)"])
    assert verdict(livekit=LiveKit(ok=True, url="wss://lk.example")) == (HEALTHY, [])
