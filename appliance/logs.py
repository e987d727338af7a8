"""Where each program's lines go (the journal, or files when there is none), and reading them back.

Journal: each program runs under ``systemd-cat``, which connects its stdout and stderr to journald under the
identifier ``appliance-<program>`` and then execs it (supervisord's pid stays the program's). The level comes from a
``<N>`` prefix on each line: our Python programs write it (agent.logs), livekit-server's lines get it from
appliance.logprefix, and Redis and PostgreSQL log through syslog, which carries their level.
Files: supervisord writes each program's output to ``<log_dir>/<program>.log`` and rotates it; every format there
starts with its time, which ``appliance logs --since`` reads.
"""

from __future__ import annotations

import heapq
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from agent.logs import JOURNAL_STDOUT_SOCKET
from appliance import programs as registry
from appliance.errors import ApplianceError

# Rotation by supervisord: at most (1 + backups) x maxbytes per program on disk.
FILE_MAXBYTES = "20MB"
FILE_BACKUPS = 5
# In journal mode the file only ever holds what a program prints before systemd-cat hands it to the journal
# (systemd-cat's own error when journald is down): small, kept for the post-mortem.
PRE_JOURNAL_MAXBYTES = "1MB"
# A line without a "<N>" prefix: stdout is informational, stderr (a crash's traceback, a config error) is an error.
UNPREFIXED_STDOUT = "info"
# That of stderr is each program's own (appliance/programs.py).


def identifier(program: str) -> str:
    """The journal identifier of a supervisord program or a service: appliance-<service>."""
    return f"appliance-{registry.service_of(program)}"


@dataclass(frozen=True)
class ProgramOutput:
    """What a supervisord program needs so its lines reach the journal or its file."""

    # Put before the program's command (empty for files).
    command_prefix: tuple[str, ...]
    # Lines of its [program:x] section.
    directives: dict[str, str]
    # Added to its environment: tells our Python programs which format to write.
    environment: dict[str, str] = field(default_factory=dict)


def program_output(program: str, *, journal: bool, log_dir: Path, python: str | Path = sys.executable) -> ProgramOutput:
    """For the supervisord program ``program`` (appliance/programs.py)."""
    directives = {
        "redirect_stderr": "true",
        "stdout_logfile": str(log_dir / f"{program}.log"),
        "stdout_logfile_maxbytes": PRE_JOURNAL_MAXBYTES if journal else FILE_MAXBYTES,
        "stdout_logfile_backups": "1" if journal else str(FILE_BACKUPS),
    }
    environment = {"APPLIANCE_LOGGING__JOURNAL": "true" if journal else "false"}
    if not journal:
        return ProgramOutput((), directives, environment)
    prefix: tuple[str, ...] = (
        shutil.which("systemd-cat") or "/usr/bin/systemd-cat",
        f"--identifier={identifier(program)}",
        f"--priority={UNPREFIXED_STDOUT}",
        f"--stderr-priority={registry.BY_NAME[program].stderr_level}",
        "--level-prefix=true",
    )
    if registry.BY_NAME[program].prefix_levels:
        # livekit-server and Prometheus write their levels as text: logprefix turns them into "<N>" and execs it.
        prefix += (str(python), "-m", "appliance.logprefix", "--")
    return ProgramOutput(prefix, directives, environment)


def redis_log_lines(*, journal: bool) -> list[str]:
    """redis.conf lines: syslog in journal mode (its levels map to syslog's), else stdout for supervisord's file."""
    if journal:
        return [
            "syslog-enabled yes",
            "syslog-ident appliance-redis",
            "syslog-facility local0",
            # With syslog on, Redis writes each line to logfile too: stdout would reach the journal twice.
            "logfile /dev/null",
        ]
    return ["syslog-enabled no", 'logfile ""']


def postgres_log_lines(*, journal: bool) -> list[str]:
    """postgresql.conf lines: syslog in journal mode (its levels map to syslog's), else stderr with the time."""
    if journal:
        return [
            "log_destination = 'syslog'",
            "logging_collector = off",
            "syslog_ident = 'appliance-postgres'",
            "syslog_facility = 'LOCAL0'",
            # "[3-1]" counters serve syslog daemons that drop repeats; journald keeps every line.
            "syslog_sequence_numbers = off",
            # One entry per message, its DETAIL, HINT and STATEMENT lines included, without "[2]" chunk numbers:
            # journald takes long, multi-line messages (splitting serves syslog daemons that truncate them).
            "syslog_split_messages = off",
            # journald adds the time and the pid.
            "log_line_prefix = '%q%u@%d '",
        ]
    return [
        "log_destination = 'stderr'",
        "logging_collector = off",
        "log_line_prefix = '%m [%p] %q%u@%d '",
    ]


def journal_available(path: str = JOURNAL_STDOUT_SOCKET) -> bool:
    """Whether journald takes streams here (systemd-cat connects to this socket) and systemd-cat exists."""
    if shutil.which("systemd-cat") is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(path)
    except OSError:
        return False
    return True


def use_journal(choice: bool | Literal["auto"]) -> bool:
    """``[logging] journal`` resolved: "auto" means the journal when journald runs here."""
    return journal_available() if choice == "auto" else choice


def check_program(program: str | None) -> str | None:
    """What `appliance logs` accepts: supervisord or a service (a supervisord program name: its service)."""
    if program is None or program in registry.LOGGED:
        return program
    if program in registry.BY_NAME:
        return registry.service_of(program)
    raise ApplianceError(f"unknown program {program!r}: choose one of {', '.join(registry.LOGGED)}")


# --- reading: `appliance logs` ---------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^-?\s*(\d+)\s*([a-z]+)(?:\s+ago)?$")
_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
SINCE_FORMS = '"2024-05-01 12:30[:00]", "2024-05-01", "12:30", "today", "yesterday", "-15m", "2 hours ago"'


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A --since value as a local, aware time; the same forms for the journal and for files."""
    now = (now or datetime.now()).astimezone()
    value = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if value in ("now", "today", "yesterday"):
        return {"now": now, "today": midnight, "yesterday": midnight - timedelta(days=1)}[value]
    relative = _RELATIVE.match(value)
    if relative and relative[2] in _UNITS and (value.startswith("-") or value.endswith("ago")):
        return now - timedelta(seconds=int(relative[1]) * _UNITS[relative[2]])
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(value.upper(), fmt).astimezone()
        except ValueError:
            pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            clock = datetime.strptime(value, fmt)
        except ValueError:
            continue
        return midnight.replace(hour=clock.hour, minute=clock.minute, second=clock.second)
    raise ApplianceError(f"--since {text!r}: not a time; use one of {SINCE_FORMS}")


def journal_command(
    program: str | None, *, follow: bool = False, lines: int | None = None, since: datetime | None = None
) -> list[str]:
    """The journalctl invocation for one program, or all of ours (supervisord's own lines included)."""
    argv = [shutil.which("journalctl") or "journalctl"]
    argv += [f"--identifier={identifier(name)}" for name in _names(program)]
    if lines is not None:
        argv.append(f"--lines={lines}")
    if since is not None:
        argv.append(f"--since={since.astimezone().strftime('%Y-%m-%d %H:%M:%S')}")
    if follow:
        argv.append("--follow")
    return argv


# Times at the start of a line, in the formats our programs write to files:
#   ours and supervisord's  2024-05-01 12:34:56.789+02:00 / 2024-05-01 12:34:56,789
#   livekit-server          2024-05-01T12:34:56.789Z
#   PostgreSQL (%m)         2024-05-01 12:34:56.789 UTC
#   Redis                   1234:M 01 May 2024 12:34:56.789
_ISO = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d{1,9}))?"
    r"(?: ?(Z|[+-]\d{2}:?\d{2}|[A-Z]{2,5}))?(?=\s|$)"
)
_REDIS = re.compile(r"^\d+:[A-Z] (\d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?(?=\s)")


def line_time(line: str) -> datetime | None:
    """When a line was written, if it starts with a time we know; an unnamed zone is the local one."""
    iso = _ISO.match(line)
    if iso:
        day, clock, fraction, zone = iso.groups()
        stamp = datetime.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S")
        stamp += timedelta(microseconds=int((fraction or "0")[:6].ljust(6, "0")))
        return _zoned(stamp, zone)
    redis = _REDIS.match(line)
    if redis:
        try:
            stamp = datetime.strptime(redis[1], "%d %b %Y %H:%M:%S")
        except ValueError:
            return None
        return (stamp + timedelta(microseconds=int((redis[2] or "0").ljust(6, "0")))).astimezone()
    return None


def _zoned(stamp: datetime, zone: str | None) -> datetime:
    if zone in ("Z", "UTC", "GMT"):
        return stamp.replace(tzinfo=UTC)
    if zone and zone[0] in "+-":
        digits = zone.replace(":", "")
        offset = timedelta(hours=int(digits[1:3]), minutes=int(digits[3:5]))
        return stamp.replace(tzinfo=timezone(offset if digits[0] == "+" else -offset))
    return stamp.astimezone()  # no zone, or an abbreviation: the machine's zone


@dataclass(frozen=True)
class Record:
    """One entry of a file: its first line (which carries the time) and the lines that continue it."""

    time: datetime | None
    label: str
    lines: tuple[str, ...]


@dataclass
class FileLog:
    lines: list[str]
    # Files whose lines carry no time, so --since could not filter them.
    untimed: list[Path] = field(default_factory=list)
    # Programs with no file in log_dir.
    missing: list[str] = field(default_factory=list)


def series(log_dir: Path, program: str | None) -> dict[str, list[Path]]:
    """Each log's label and files, oldest first (supervisord rotates x.log to x.log.1, x.log.1 to x.log.2, ...)."""
    found: dict[str, list[Path]] = {}
    for label in _labels(program):
        backups = sorted(
            (p for p in log_dir.glob(f"{label}.log.*") if p.suffix[1:].isdigit()),
            key=lambda p: int(p.suffix[1:]),
            reverse=True,
        )
        files = [p for p in (*backups, log_dir / f"{label}.log") if p.is_file()]
        if files:
            found[label] = files
    return found


def read_files(
    log_dir: Path, program: str | None, *, lines: int | None = None, since: datetime | None = None
) -> FileLog:
    """The last ``lines`` lines (all when None) written since ``since``, merged by time across the files; when
    several programs' files are read (all, or worker and worker-alt), each line starts with its program's name."""
    logs = series(log_dir, program)
    result = FileLog([])
    result.missing = [n for n in _names(program) if not any(registry.service_of(label) == n for label in logs)]
    streams: list[list[Record]] = []
    for label, files in logs.items():
        text = _tail(files, lines) if since is None and lines is not None else _all_lines(files, since)
        records = list(_records(label, text))
        if since is not None:
            if records and all(r.time is None for r in records):
                result.untimed.extend(files)
            else:
                records = [r for r in records if r.time is not None and r.time >= since]
        streams.append(records)
    merged = heapq.merge(*streams, key=lambda r: r.time or datetime.min.replace(tzinfo=UTC))
    named = program is None or len(logs) > 1
    out = [f"{r.label} | {line}" if named else line for r in merged for line in r.lines]
    result.lines = out if lines is None else out[max(0, len(out) - lines) :]
    return result


def _names(program: str | None) -> list[str]:
    return [program] if program else list(registry.LOGGED)


def _labels(program: str | None) -> list[str]:
    """The supervisord programs whose files hold ``program``'s lines (worker: worker and worker-alt)."""
    return [
        label
        for name in _names(program)
        for label in ([p.name for p in registry.PROGRAMS if p.service == name] or [name])
    ]


def _records(label: str, text: Iterable[str]) -> Iterator[Record]:
    """Lines grouped into records; a line without a time continues the one before (a traceback's lines)."""
    first: datetime | None = None
    group: list[str] = []
    for line in text:
        stamp = line_time(line)
        if stamp is not None and group:
            yield Record(first, label, tuple(group))
            group = []
        if stamp is not None or not group:
            first = stamp if stamp is not None else first
        group.append(line)
    if group:
        yield Record(first, label, tuple(group))


def _tail(files: Sequence[Path], count: int) -> list[str]:
    """The last ``count`` lines of the files taken as one, newest file first until there are enough."""
    found: list[str] = []
    for path in reversed(files):
        found = _last_lines(path, count - len(found)) + found
        if len(found) >= count:
            break
    return found


def _last_lines(path: Path, count: int, block: int = 65536) -> list[str]:
    if count <= 0:
        return []
    with path.open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        data = b""
        while end > 0 and data.count(b"\n") <= count:
            start = max(0, end - block)
            fh.seek(start)
            data = fh.read(end - start) + data
            end = start
    text = data.decode("utf-8", "replace").splitlines()
    return text[-count:]


def _all_lines(files: Sequence[Path], since: datetime | None) -> Iterator[str]:
    """Every line of the files, oldest first, skipping the older files that ended before ``since``."""
    start = 0
    if since is not None:
        for index in range(len(files) - 1, -1, -1):
            last = next((t for t in map(line_time, reversed(_last_lines(files[index], 50))) if t), None)
            if last is not None and last < since:
                start = index + 1
                break
    for path in files[start:]:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                yield line.rstrip("\n")


class _Followed:
    """One log file being followed: new lines as they are appended, across supervisord's rotations."""

    def __init__(self, label: str, path: Path) -> None:
        self.label, self.path = label, path
        self.inode: int | None = None
        self.offset = 0
        self.partial = b""
        try:
            st = path.stat()
            self.inode, self.offset = st.st_ino, st.st_size
        except FileNotFoundError:
            pass

    def poll(self) -> list[str]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        if st.st_ino != self.inode or st.st_size < self.offset:  # rotated, or created since
            self.inode, self.offset, self.partial = st.st_ino, 0, b""
        if st.st_size == self.offset:
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = self.partial + fh.read()
            self.offset = fh.tell()
        *complete, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]


class Follower:
    """Lines appended to the logs from its creation on, labelled as read_files labels them: create it before
    reading the last lines, so that nothing written in between is missed."""

    def __init__(self, log_dir: Path, program: str | None) -> None:
        self.program = program
        self.files = [_Followed(label, log_dir / f"{label}.log") for label in _labels(program)]

    def poll(self) -> list[str]:
        named = self.program is None or sum(item.path.exists() for item in self.files) > 1
        return [f"{item.label} | {line}" if named else line for item in self.files for line in item.poll()]

    def follow(self, *, stop: Callable[[], bool] = lambda: False, interval_s: float = 0.25) -> Iterator[str]:
        while not stop():
            yield from self.poll()
            time.sleep(interval_s)
