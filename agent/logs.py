"""Logging for the data plane's entry points, and the one way we describe an error in a log line.

Two formats, chosen by ``[logging] journal``. For the journal (systemd-cat, or a unit's stderr), every line starts
with its syslog level as ``<N>`` and carries no time: journald records the time and parses the level, so
``journalctl -t appliance-worker -p warning`` works. For plain files, each record starts with its local time.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from agent.settings import LoggingSettings

# Where journald listens for the streams of systemd-cat and of units' stdout/stderr.
JOURNAL_STDOUT_SOCKET = "/run/systemd/journal/stdout"


def syslog_level(levelno: int) -> int:
    """The syslog priority of a Python level (7 debug … 2 critical); levels between ours round down to the next."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>LEVEL logger: message``, with ``<N>`` on every line so a traceback keeps its record's level."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_level(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


class FileFormatter(logging.Formatter):
    """``2024-05-01 12:34:56.789+02:00 LEVEL logger: message``: local time with its offset, so `appliance logs
    --since` reads it whatever the zone; a traceback's lines follow their record's."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created).astimezone().isoformat(sep=" ", timespec="milliseconds")


def setup_logging(settings: LoggingSettings | None = None, *, stream: TextIO | None = None) -> None:
    """Route every record (and warnings) to ``stream`` (stderr) in the format ``settings`` asks for.

    Without settings (before they are loaded): INFO, the journal's format when stderr is journald's.
    """
    out = stream if stream is not None else sys.stderr
    level = settings.level if settings is not None else "INFO"
    choice = settings.journal if settings is not None else "auto"
    journal = stream_is_journal(out, os.environ) if choice == "auto" else choice
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter() if journal else FileFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # A line per request to the health endpoints, which a container's health check or a probe calls every few
    # seconds, would bury everything else; their failures still show as warnings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # warnings.warn would otherwise print to stderr without a level.
    logging.captureWarnings(True)


def stream_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is connected to journald: a unit's stream (systemd sets JOURNAL_STREAM to its
    ``device:inode``) or a socket connected to journald's stdout socket (systemd-cat sets no variable)."""
    try:
        fd = stream.fileno()
        st = os.fstat(fd)
    except (OSError, ValueError):  # not a real file (pytest's capture, a StringIO)
        return False
    if environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}":
        return True
    if not stat.S_ISSOCK(st.st_mode):
        return False
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return bool(sock.family == socket.AF_UNIX and sock.getpeername() == JOURNAL_STDOUT_SOCKET)
    except OSError:
        return False
    finally:
        sock.close()


def brief(exc: BaseException) -> str:
    """An error's type and first line: enough to act on, never a connection string or a password."""
    text = str(exc)
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}"
