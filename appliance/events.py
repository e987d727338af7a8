"""supervisord event listener: counts each program's restarts and crashes, which supervisord itself does not keep.

Runs as ``[eventlistener:events]`` (``python -m appliance.events FILE``, ``events=PROCESS_STATE``) and keeps
``FILE`` (``<run_dir>/events.json``) up to date, replaced atomically, for ``appliance status``. The counts are
those of the current supervisord: a listener started by another supervisord (a restart of the service) begins
afresh, one restarted by the same supervisord carries on. stdout is supervisord's event protocol: logs go to stderr.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pydantic import BaseModel, Field, ValidationError

from appliance.files import write_atomic

# Crash-loop detection: a program that exited unexpectedly, backed off or went FATAL this often in this window is
# crash-looping. One kill or one crash is a restart, not a loop; three in ten minutes is something to look at.
CRASH_LOOP_COUNT = 3
CRASH_LOOP_WINDOW_S = 600.0
# Recent bad events kept per program: enough for the window at any sensible count.
RECENT_KEPT = 20
FILE_NAME = "events.json"


def events_file(run_dir: Path) -> Path:
    """Where the listener writes and status reads: ``<run_dir>/events.json``."""
    return run_dir / FILE_NAME


class ProgramEvents(BaseModel):
    """One program's counts since supervisord started; ``recent`` holds (time, what) of its latest bad events."""

    restarts: int = 0  # automatic starts: from EXITED or BACKOFF, not from STOPPED (an operator's start)
    unexpected_exits: int = 0
    backoffs: int = 0
    fatals: int = 0
    pid: int = 0  # the pid of its last start
    recent: list[tuple[float, str]] = Field(default_factory=list)

    def bad_within(self, now: float, window_s: float = CRASH_LOOP_WINDOW_S) -> int:
        return sum(1 for at, _ in self.recent if now - at <= window_s)

    def crash_looping(self, now: float, count: int = CRASH_LOOP_COUNT, window_s: float = CRASH_LOOP_WINDOW_S) -> bool:
        return self.bad_within(now, window_s) >= count


class Events(BaseModel):
    """The file's content."""

    supervisord_pid: int = 0
    since: float = 0.0
    programs: dict[str, ProgramEvents] = Field(default_factory=dict)

    def record(self, eventname: str, headers: dict[str, str], now: float) -> None:
        """Count one PROCESS_STATE_* event, given its payload's header line."""
        state = eventname.removeprefix("PROCESS_STATE_")
        name = headers.get("processname", "?")
        group = headers.get("groupname", name)
        key = name if group == name else f"{group}:{name}"
        program = self.programs.setdefault(key, ProgramEvents())
        bad = ""
        if state == "STARTING" and headers.get("from_state") in ("EXITED", "BACKOFF"):
            program.restarts += 1
        elif state == "EXITED" and headers.get("expected") == "0":
            program.unexpected_exits += 1
            bad = "exited unexpectedly"
        elif state == "BACKOFF":
            program.backoffs += 1
            bad = "backoff"
        elif state == "FATAL":
            program.fatals += 1
            bad = "fatal"
        if state in ("STARTING", "RUNNING") and headers.get("pid", "").isdigit():
            program.pid = int(headers["pid"])
        if bad:
            program.recent = [*program.recent, (now, bad)][-RECENT_KEPT:]


def load(path: Path) -> Events | None:
    """The file's content, or None when it is absent or unreadable (a listener that never ran, or a torn file)."""
    try:
        return Events.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def save(events: Events, path: Path) -> None:
    """Write to a temporary file beside ``path`` and rename it: a reader sees the old file or the new one."""
    write_atomic(path, events.model_dump_json(), mode=0o640)  # status runs as root or the service user's group


def start(path: Path, supervisord_pid: int, now: float) -> Events:
    """The counts to carry on from: the file's when the same supervisord wrote it, else fresh ones."""
    previous = load(path)
    if previous is not None and previous.supervisord_pid == supervisord_pid:
        return previous
    return Events(supervisord_pid=supervisord_pid, since=now)


def serve(path: Path, stdin: IO[str], stdout: IO[str], supervisord_pid: int) -> None:
    """The listener loop: READY, read one event, count it, answer OK; return when supervisord closes stdin."""
    from supervisor import childutils

    events = start(path, supervisord_pid, time.time())
    _save_or_log(events, path)
    while True:
        childutils.listener.ready(stdout)
        line = stdin.readline()
        if not line:
            return
        header = childutils.get_headers(line)
        payload = stdin.read(int(header["len"]))
        try:
            if header.get("eventname", "").startswith("PROCESS_STATE_"):
                body_headers = childutils.get_headers(payload.split("\n", 1)[0])  # no body follows
                events.record(header["eventname"], body_headers, time.time())
                _save_or_log(events, path)
        except Exception as exc:  # a count lost is better than a listener that blocks supervisord's events
            _log(f"cannot count {header.get('eventname')}: {exc!r}")
        # Always OK: FAIL makes supervisord send the same event again, for ever if the failure persists.
        childutils.listener.ok(stdout)


def _save_or_log(events: Events, path: Path) -> None:
    try:
        save(events, path)
    except OSError as exc:
        _log(f"cannot write {path}: {exc}")


def _log(message: str) -> None:
    print(f"appliance.events: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        _log("usage: python -m appliance.events FILE (run by supervisord as an event listener)")
        return 2
    # Our parent is the supervisord that runs us: its pid tells this supervisord's counts from a previous one's.
    serve(Path(args[0]), sys.stdin, sys.stdout, os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
