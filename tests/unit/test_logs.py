"""Logs: what each program's command line and lines give journald, and `appliance logs` reading files."""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import agent.logs
from agent.logs import FileFormatter, JournalFormatter, setup_logging, stream_is_journal, syslog_level
from agent.settings import AgentSettings, LoggingSettings
from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.logprefix import prefixed
from appliance.logs import (
    Follower,
    check_program,
    journal_command,
    line_time,
    parse_since,
    postgres_log_lines,
    program_output,
    read_files,
    redis_log_lines,
)
from harness.servers import wait_until

ROOT = Path(__file__).parents[2]


def record(level: int, message: str, *, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad value")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("agent.worker", level, __file__, 1, message, None, exc_info)


# --- our Python programs' lines -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (logging.INFO + 5, 6),
        (logging.WARNING + 5, 4),
    ],
)
def test_python_levels_map_to_syslog_priorities(level: int, priority: int) -> None:
    assert syslog_level(level) == priority


def test_journal_lines_carry_the_level_and_no_time() -> None:
    assert JournalFormatter().format(record(logging.WARNING, "slow")) == "<4>WARNING agent.worker: slow"


def test_every_line_of_a_traceback_keeps_its_records_level() -> None:
    lines = JournalFormatter().format(record(logging.ERROR, "room died\nsecond line", exc=True)).splitlines()
    assert len(lines) > 4
    assert all(line.startswith("<3>") for line in lines), lines
    assert lines[0] == "<3>ERROR agent.worker: room died"
    assert lines[-1] == "<3>ValueError: bad value"


def test_file_lines_start_with_a_local_time_that_logs_can_read() -> None:
    line = FileFormatter().format(record(logging.INFO, "started"))
    assert line.endswith(" INFO agent.worker: started")
    stamp = line_time(line)
    assert stamp is not None
    assert abs(stamp - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_logging")
def test_setup_logging_journal_format_level_and_warnings() -> None:
    out = io.StringIO()
    setup_logging(LoggingSettings(level="WARNING", journal=True), stream=out)
    log = logging.getLogger("agent.flusher")
    log.info("not shown")
    log.warning("backlog %d", 5)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "<4>WARNING agent.flusher: backlog 5"
    assert any("deprecated thing" in line for line in lines[1:])
    assert all(line.startswith("<4>") for line in lines)


@pytest.mark.usefixtures("restore_logging")
def test_setup_logging_file_format() -> None:
    out = io.StringIO()
    setup_logging(LoggingSettings(journal=False), stream=out)
    logging.getLogger("agent.flusher").info("hello")
    line = out.getvalue().strip()
    assert line_time(line) is not None and line.endswith("INFO agent.flusher: hello")


@pytest.mark.usefixtures("restore_logging")
def test_setup_logging_auto_writes_plain_lines_when_stderr_is_not_the_journal() -> None:
    out = io.StringIO()
    setup_logging(LoggingSettings(journal="auto"), stream=out)
    logging.getLogger("x").error("oops")
    assert line_time(out.getvalue()) is not None


def test_the_supervisor_sets_the_format_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AgentSettings().logging.journal == "auto"
    for value, expected in (("true", True), ("false", False), ("auto", "auto")):
        monkeypatch.setenv("APPLIANCE_LOGGING__JOURNAL", value)
        assert AgentSettings().logging.journal == expected
    env = program_output("worker", journal=True, log_dir=Path("/l")).environment
    monkeypatch.setenv("APPLIANCE_LOGGING__JOURNAL", env["APPLIANCE_LOGGING__JOURNAL"])
    assert AgentSettings().logging.journal is True


def test_a_stream_is_the_journal_by_journal_stream_or_by_journalds_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "f").open("w") as fh:
        st = os.fstat(fh.fileno())
        assert not stream_is_journal(fh, {})
        assert stream_is_journal(fh, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    path = str(tmp_path / "stdout.sock")
    monkeypatch.setattr(agent.logs, "JOURNAL_STDOUT_SOCKET", path)
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)
        with os.fdopen(os.dup(client.fileno()), "w") as stream:
            assert stream_is_journal(stream, {})
    a, b = socket.socketpair()
    with a, b, os.fdopen(os.dup(a.fileno()), "w") as stream:
        assert not stream_is_journal(stream, {})


# --- each program's command line and config -------------------------------------------------------------------


def test_journal_mode_runs_each_program_under_systemd_cat_with_its_identifier() -> None:
    out = program_output("flusher", journal=True, log_dir=Path("/var/log/appliance"))
    assert Path(out.command_prefix[0]).name == "systemd-cat"
    assert out.command_prefix[1:] == (
        "--identifier=appliance-flusher",
        "--priority=info",
        "--stderr-priority=err",
        "--level-prefix=true",
    )
    assert out.environment == {"APPLIANCE_LOGGING__JOURNAL": "true"}
    # Only what precedes systemd-cat's exec (its own error) can reach supervisord's pipe: kept, small.
    assert out.directives["stdout_logfile"] == "/var/log/appliance/flusher.log"
    assert out.directives["stdout_logfile_maxbytes"] == "1MB"


def test_postgres_says_on_stderr_what_it_says_before_syslog_takes_over_a_notice() -> None:
    assert "--stderr-priority=notice" in program_output("postgres", journal=True, log_dir=Path("/l")).command_prefix
    assert "--stderr-priority=err" in program_output("redis", journal=True, log_dir=Path("/l")).command_prefix


def test_both_workers_log_as_appliance_worker_to_their_own_files() -> None:
    out = program_output("worker-alt", journal=True, log_dir=Path("/l"))
    assert "--identifier=appliance-worker" in out.command_prefix
    assert out.directives["stdout_logfile"] == "/l/worker-alt.log"


def test_livekit_gets_its_levels_through_logprefix() -> None:
    out = program_output("livekit", journal=True, log_dir=Path("/l"), python="/venv/bin/python")
    assert "--identifier=appliance-livekit" in out.command_prefix
    assert out.command_prefix[-4:] == ("/venv/bin/python", "-m", "appliance.logprefix", "--")


def test_file_mode_is_a_rotated_file_per_program() -> None:
    out = program_output("redis", journal=False, log_dir=Path("/var/log/appliance"))
    assert out.command_prefix == ()
    assert out.directives == {
        "redirect_stderr": "true",
        "stdout_logfile": "/var/log/appliance/redis.log",
        "stdout_logfile_maxbytes": "20MB",
        "stdout_logfile_backups": "5",
    }
    assert out.environment == {"APPLIANCE_LOGGING__JOURNAL": "false"}


def test_redis_and_postgres_log_through_syslog_in_journal_mode() -> None:
    assert "syslog-ident appliance-redis" in redis_log_lines(journal=True)
    assert "logfile /dev/null" in redis_log_lines(journal=True)
    assert redis_log_lines(journal=False) == ["syslog-enabled no", 'logfile ""']
    pg = postgres_log_lines(journal=True)
    assert "log_destination = 'syslog'" in pg and "syslog_ident = 'appliance-postgres'" in pg
    assert "log_destination = 'stderr'" in postgres_log_lines(journal=False)
    # With a time, so `appliance logs --since` can read PostgreSQL's file.
    assert any("%m" in line for line in postgres_log_lines(journal=False))


# --- livekit-server's lines through logprefix ------------------------------------------------------------------

LIVEKIT_INFO = (
    "2026-11-25T20:05:07.893Z\tINFO\tlivekit\tservice/server.go:264\tstarting LiveKit server\t"
    '{"portHttp": 17880, "version": "1.9.11"}'
)


@pytest.mark.parametrize(
    ("line", "previous", "expected"),
    [
        (LIVEKIT_INFO, 3, '<6>INFO livekit service/server.go:264 starting LiveKit server {"portHttp": 17880, '),
        ("2026-11-25T20:05:07.893Z\tWARN\tlivekit\tx.go:1\tslow", 6, "<4>WARN livekit x.go:1 slow"),
        ("2026-11-25T20:05:07.893+0100\tERROR\tlivekit\tx.go:1\tfailed", 6, "<3>ERROR livekit x.go:1 failed"),
        ("2026-11-25T20:05:07.893Z\tDEBUG\tlivekit\tx.go:1\tdetail", 6, "<7>DEBUG"),
        ("\tgithub.com/livekit/x.go:12", 3, "<3>\tgithub.com"),
        ("panic: runtime error", 6, "<2>panic: runtime error"),
        ("started without a level", 6, "<6>started"),
        # Prometheus (logfmt)
        (
            'ts=2026-12-06T08:57:53.996Z caller=main.go:551 level=info msg="Starting Prometheus Server"',
            3,
            '<6>caller=main.go:551 level=info msg="Starting Prometheus Server"',
        ),
        (
            'ts=2026-12-06T08:57:53.996Z caller=scrape.go:1 level=warn component="scrape manager" msg=x',
            6,
            '<4>caller=scrape.go:1 level=warn component="scrape manager"',
        ),
        ("ts=2026-12-06T08:57:53.996Z caller=main.go:1 level=error err=boom", 6, "<3>caller=main.go:1 level=error"),
    ],
)
def test_logprefix_maps_zap_and_logfmt_levels(line: str, previous: int, expected: str) -> None:
    text, _ = prefixed(line, previous)
    assert text.startswith(expected)


def test_logprefix_execs_the_program_forwarding_nothing_it_is_the_program(tmp_path: Path) -> None:
    """Same pid (supervisord signals the program itself), its exit code, every line prefixed, none lost."""
    script = tmp_path / "prog.py"
    script.write_text(
        "import os, sys\n"
        "print(os.getpid(), flush=True)\n"
        "sys.stderr.write('2026-11-25T20:05:07.891Z\\tWARN\\tlivekit\\tx.go:1\\tslow\\n  trace line\\n')\n"
        "sys.stderr.write('last line without newline')\n"
        "sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "appliance.logprefix", "--", sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 3
    lines = proc.stdout.splitlines()
    assert lines[1:] == ["<4>WARN livekit x.go:1 slow", "<4>  trace line", "<4>last line without newline"]


def test_logprefix_signals_reach_the_program() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.logprefix", "--", "sh", "-c", "echo ready; exec sleep 30"],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"<6>ready\n"
        wait_until(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep", 10, "sleep exec'd")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM
        assert proc.stdout.read() == b""  # the filter saw the end of the pipe and exited
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_logprefix_says_when_the_program_cannot_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "appliance.logprefix", "--", "/nonexistent/livekit-server"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 127
    assert "cannot run /nonexistent/livekit-server" in proc.stderr


# --- reading back ----------------------------------------------------------------------------------------------

NOW = datetime(2026, 5, 1, 12, 0, 0).astimezone()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-04-30 10:15", datetime(2026, 4, 30, 10, 15).astimezone()),
        ("2026-04-30 10:15:30", datetime(2026, 4, 30, 10, 15, 30).astimezone()),
        ("2026-04-30", datetime(2026, 4, 30).astimezone()),
        ("09:30", NOW.replace(hour=9, minute=30)),
        ("today", NOW.replace(hour=0)),
        ("yesterday", NOW.replace(hour=0) - timedelta(days=1)),
        ("-15m", NOW - timedelta(minutes=15)),
        ("2 hours ago", NOW - timedelta(hours=2)),
        ("30s ago", NOW - timedelta(seconds=30)),
    ],
)
def test_since_forms(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["soon", "15m", "2026-13-01", "-5 fortnights"])
def test_a_bad_since_is_one_line_naming_the_forms(text: str) -> None:
    with pytest.raises(ApplianceError, match=r"--since .*: not a time; use one of"):
        parse_since(text, NOW)


def test_an_unknown_program_names_the_valid_ones() -> None:
    with pytest.raises(ApplianceError) as excinfo:
        check_program("workr")
    assert str(excinfo.value) == (
        "unknown program 'workr': choose one of supervisord, redis, postgres, livekit, metrics, prometheus, console,"
        " flusher, worker"
    )
    assert check_program("worker-alt") == "worker"
    assert check_program(None) is None


def test_journalctl_invocation() -> None:
    argv = journal_command("worker", follow=True, lines=50, since=datetime(2026, 4, 30, 10, 15).astimezone())
    assert Path(argv[0]).name == "journalctl"
    assert argv[1:] == ["--identifier=appliance-worker", "--lines=50", "--since=2026-04-30 10:15:00", "--follow"]
    every = journal_command(None)
    assert every[1:] == [
        f"--identifier=appliance-{p}"
        for p in (
            "supervisord",
            "redis",
            "postgres",
            "livekit",
            "metrics",
            "prometheus",
            "console",
            "flusher",
            "worker",
        )
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2026-05-01 12:34:56.789+02:00 INFO agent.worker: x", datetime(2026, 5, 1, 10, 34, 56, 789000, UTC)),
        (LIVEKIT_INFO, datetime(2026, 11, 25, 20, 5, 7, 893000, UTC)),
        ("2026-05-01 12:34:56.789 UTC [77] LOG:  ready", datetime(2026, 5, 1, 12, 34, 56, 789000, UTC)),
        ("2026-05-01 12:34:56,789 INFO spawned: 'worker'", datetime(2026, 5, 1, 12, 34, 56, 789000).astimezone()),
        ("1234:M 01 May 2026 12:34:56.789 * Ready", datetime(2026, 5, 1, 12, 34, 56, 789000).astimezone()),
        ("2026-05-01T12:34:56.789-0130\tINFO\tx", datetime(2026, 5, 1, 14, 4, 56, 789000, UTC)),
        ("Traceback (most recent call last):", None),
        ("  File 'x.py', line 1", None),
        ("12:34:56 no date", None),
    ],
)  # fmt: skip
def test_line_times(line: str, expected: datetime | None) -> None:
    assert line_time(line) == expected


def stamp(minute: int, second: int = 0) -> str:
    return f"2026-05-01 12:{minute:02d}:{second:02d}.000+00:00"


def test_files_are_merged_by_time_named_by_program_and_tracebacks_stay_whole(tmp_path: Path) -> None:
    (tmp_path / "worker.log").write_text(
        f"{stamp(1)} INFO agent.worker: w1\n{stamp(3)} ERROR agent.worker: died\nTraceback:\n  boom\n{stamp(5)} w5\n"
    )
    (tmp_path / "flusher.log").write_text(f"{stamp(2)} INFO f2\n{stamp(4)} INFO f4\n")
    (tmp_path / "redis.log").write_text("1:M 30 Apr 2026 12:00:30.000 * Ready\n")  # local time: a day early
    found = read_files(tmp_path, None)
    assert found.lines == [
        "redis | 1:M 30 Apr 2026 12:00:30.000 * Ready",
        f"worker | {stamp(1)} INFO agent.worker: w1",
        f"flusher | {stamp(2)} INFO f2",
        f"worker | {stamp(3)} ERROR agent.worker: died",
        "worker | Traceback:",
        "worker |   boom",
        f"flusher | {stamp(4)} INFO f4",
        f"worker | {stamp(5)} w5",
    ]
    assert set(found.missing) == {"supervisord", "postgres", "livekit", "metrics", "prometheus", "console"}
    assert read_files(tmp_path, None, lines=2).lines == [f"flusher | {stamp(4)} INFO f4", f"worker | {stamp(5)} w5"]
    since = datetime(2026, 5, 1, 12, 3, tzinfo=UTC)
    assert read_files(tmp_path, "worker", since=since).lines == [
        f"{stamp(3)} ERROR agent.worker: died",
        "Traceback:",
        "  boom",
        f"{stamp(5)} w5",
    ]
    assert read_files(tmp_path, "flusher", lines=0).lines == []


def test_one_program_reads_across_rotated_files(tmp_path: Path) -> None:
    (tmp_path / "flusher.log.2").write_text(f"{stamp(1)} a\n{stamp(2)} b\n")
    (tmp_path / "flusher.log.1").write_text(f"{stamp(3)} c\n")
    (tmp_path / "flusher.log").write_text(f"{stamp(4)} d\n")
    assert read_files(tmp_path, "flusher").lines == [
        f"{stamp(m)} {c}" for m, c in zip((1, 2, 3, 4), "abcd", strict=True)
    ]
    assert read_files(tmp_path, "flusher", lines=3).lines == [
        f"{stamp(m)} {c}" for m, c in ((2, "b"), (3, "c"), (4, "d"))
    ]
    assert read_files(tmp_path, "flusher", since=datetime(2026, 5, 1, 12, 3, tzinfo=UTC)).lines == [
        f"{stamp(3)} c",
        f"{stamp(4)} d",
    ]


def test_both_workers_files_are_the_workers_log(tmp_path: Path) -> None:
    (tmp_path / "worker.log").write_text(f"{stamp(1)} old worker draining\n")
    (tmp_path / "worker-alt.log").write_text(f"{stamp(2)} new worker registered\n")
    assert read_files(tmp_path, "worker").lines == [
        f"worker | {stamp(1)} old worker draining",
        f"worker-alt | {stamp(2)} new worker registered",
    ]


def test_a_file_without_times_is_reported_and_shown_whole(tmp_path: Path) -> None:
    (tmp_path / "livekit.log").write_text("no time here\nnor here\n")
    found = read_files(tmp_path, "livekit", since=datetime(2026, 5, 1, tzinfo=UTC))
    assert found.untimed == [tmp_path / "livekit.log"]
    assert found.lines == ["no time here", "nor here"]


def test_the_follower_sees_appends_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "flusher.log"
    log.write_text("before\n")
    follower = Follower(tmp_path, "flusher")
    assert follower.poll() == []
    with log.open("a") as fh:
        fh.write("one\ntw")
    assert follower.poll() == ["one"]
    with log.open("a") as fh:
        fh.write("o\n")
    assert follower.poll() == ["two"]
    log.rename(tmp_path / "flusher.log.1")  # supervisord's rotation
    log.write_text("after rotation\n")
    assert follower.poll() == ["after rotation"]
    (tmp_path / "worker-alt.log").write_text("x\n")
    everyone = Follower(tmp_path, None)
    (tmp_path / "worker-alt.log").write_text("x\ny\n")
    assert everyone.poll() == ["worker-alt | y"]


# --- the command ----------------------------------------------------------------------------------------------


def configure(tmp_path: Path, log_dir: Path, journal: str = "false") -> None:
    (tmp_path / "appliance.toml").write_text(f'[logging]\njournal = {journal}\n[control]\nlog_dir = "{log_dir}"\n')


def test_logs_command_reads_files(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker.log").write_text("".join(f"{stamp(m)} INFO line {m}\n" for m in range(5)))
    configure(tmp_path, logs)
    result = CliRunner().invoke(main, ["logs", "worker", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{stamp(3)} INFO line 3", f"{stamp(4)} INFO line 4"]
    result = CliRunner().invoke(main, ["logs", "livekit"])
    assert result.exit_code == 0
    assert "no log of livekit" in result.stderr


def test_logs_command_errors_are_one_line(tmp_path: Path) -> None:
    configure(tmp_path, tmp_path / "absent")
    for args, fragment in (
        (["logs", "nginx"], "unknown program 'nginx': choose one of supervisord, redis"),
        (["logs", "--since", "soon"], "--since 'soon': not a time"),
        (["logs"], "does not exist: is the appliance installed?"),
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1
        assert len(result.stderr.splitlines()) == 1 and fragment in result.stderr, result.stderr


def test_logs_command_follows(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "flusher.log").write_text(f"{stamp(1)} first\n")
    configure(tmp_path, logs)
    env = {**os.environ, "APPLIANCE_CONFIG": str(tmp_path / "appliance.toml")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "logs", "flusher", "-f"], stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == f"{stamp(1)} first"
        time.sleep(0.3)
        with (logs / "flusher.log").open("a") as fh:
            fh.write(f"{stamp(2)} second\n")
        assert proc.stdout.readline().decode().strip() == f"{stamp(2)} second"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        if proc.stdout:
            proc.stdout.close()


def test_default_config_documents_the_logging_section() -> None:
    text = (ROOT / "config" / "appliance.toml").read_text()
    assert "[logging]" in text and 'journal = "auto"' in text
