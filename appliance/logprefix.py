"""Run a program that logs its level as text (livekit-server's zap lines, Prometheus's logfmt) with each line's level
made a journald ``<N>`` prefix.

    python -m appliance.logprefix -- COMMAND [ARG...]

livekit-server writes ``TIME<TAB>LEVEL<TAB>logger<TAB>caller<TAB>message<TAB>{fields}`` to stderr and cannot log to
syslog. We exec the program in this process, so supervisord's pid is the program's: signals reach it directly and
its exit code is supervisord's to see. Before that, a forked filter takes the program's stdout and stderr through a
pipe and writes each line to our stdout (systemd-cat's journal stream) as ``<N>LEVEL logger caller message``: the
time goes (journald records it), a line without a level (a stack trace) keeps the level of the line before it.
Prometheus writes ``ts=TIME caller=... level=info msg=...``: its ``ts=`` goes the same way.
The filter ends when the program's end of the pipe closes, i.e. when the program exits, however it dies.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

# zap's level names and their syslog priorities.
ZAP_LEVELS = {"DEBUG": 7, "INFO": 6, "WARN": 4, "ERROR": 3, "DPANIC": 2, "PANIC": 2, "FATAL": 2}
# A Go runtime crash is printed raw, not through the logger.
_GO_CRASH = ("panic: ", "fatal error: ")
_RECORD = re.compile(r"^[0-9][0-9T:.+\-Z]*\t([A-Z]+)\t")
_LOGFMT = re.compile(r"^ts=\S+ (.*\blevel=(debug|info|warn|error)\b.*)$")


def prefixed(line: str, previous: int) -> tuple[str, int]:
    """``line`` with its ``<N>``, and the level a following line without one inherits."""
    record = _RECORD.match(line)
    if record and record[1] in ZAP_LEVELS:
        level = ZAP_LEVELS[record[1]]
        return f"<{level}>" + " ".join(line.split("\t")[1:]), level
    logfmt = _LOGFMT.match(line)
    if logfmt:
        level = ZAP_LEVELS[logfmt[2].upper()]
        return f"<{level}>{logfmt[1]}", level
    if line.startswith(_GO_CRASH):
        return f"<2>{line}", 2
    return f"<{previous}>{line}", previous


def _filter(source: int, sink: int) -> None:
    """Copy lines from ``source`` to ``sink`` with their prefix until end of file."""
    level, pending = 6, b""
    while True:
        try:
            chunk = os.read(source, 65536)
        except InterruptedError:
            continue
        if chunk:
            *lines, pending = (pending + chunk).split(b"\n")
        else:  # end of file: a last line without its newline is still a line
            lines, pending = ([pending] if pending else []), b""
        out = []
        for raw in lines:
            text, level = prefixed(raw.decode("utf-8", "replace"), level)
            out.append(text.encode() + b"\n")
        if out:
            os.write(sink, b"".join(out))
        if not chunk:
            return


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m appliance.logprefix -- COMMAND [ARG...]", file=sys.stderr)
        sys.exit(2)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        # Forked twice: the filter is not the program's child, so the program has nothing of ours to reap.
        if os.fork() == 0:
            os.close(write_end)
            # A TERM or INT to the process group is for the program: the filter stays to write its last lines.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            try:
                _filter(read_end, sys.stdout.fileno())
            finally:
                os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    os.close(read_end)
    stderr = os.dup(2)  # close-on-exec: where we say why the exec failed, if it does
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    # Python ignores these; an ignored signal stays ignored across exec.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        os.write(stderr, f"logprefix: cannot run {args[0]}: {exc.strerror}\n".encode())
        os._exit(127)


if __name__ == "__main__":
    main()
