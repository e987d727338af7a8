"""The last resort when Redis and PostgreSQL are both down: JSONL files, each line fsynced before it counts.

Each writer appends to its own file under an exclusive flock; the flusher imports a file only when it can take
that lock, removes it while still holding it, and a writer that finds its file removed starts a new one.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from agent.store import wal
from agent.store.records import ConversationEvent, InvalidMessage, Message

SUFFIX = ".jsonl"


@dataclass
class SpoolFile:
    path: Path
    messages: list[Message] = field(default_factory=list)
    events: list[ConversationEvent] = field(default_factory=list)
    bad_lines: list[tuple[bytes, str]] = field(default_factory=list)  # (line, reason)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"

    def write_message(self, message: Message) -> None:
        self._write(wal.spool_line(message))

    def write_event(self, event: ConversationEvent) -> None:
        self._write(wal.spool_line(event))

    def _write(self, line: bytes) -> None:
        """Blocking: returns once the line is on disk (the acknowledgement of the degraded mode)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                info = os.fstat(fd)
                if info.st_nlink == 0:
                    continue  # the flusher imported and removed it meanwhile: open a new one
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                if info.st_size == 0:
                    fsync_dir(self.directory)  # a new file: make its name durable too
                return
            finally:
                os.close(fd)

    def files(self) -> list[Path]:
        with suppress(FileNotFoundError):
            return sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX))
        return []

    def read(self, path: Path) -> SpoolFile:
        """Parse a file without locking it (resume reads while writers may append; a torn last line is skipped)."""
        out = SpoolFile(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return out
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = wal.decode_spool_line(line)
            except InvalidMessage as exc:
                out.bad_lines.append((line, str(exc)))
                continue
            if isinstance(record, Message):
                out.messages.append(record)
            else:
                out.events.append(record)
        return out

    def messages_for(self, conversation_id: str) -> list[Message]:
        return [m for p in self.files() for m in self.read(p).messages if m.conversation_id == conversation_id]

    def events_for_room(self, room: str) -> list[ConversationEvent]:
        return [e for p in self.files() for e in self.read(p).events if e.room == room]

    @contextmanager
    def claim(self, path: Path) -> Iterator[SpoolFile | None]:
        """Lock a file for import; yields None when a writer holds it. Remove it with ``discard`` inside."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            if os.fstat(fd).st_nlink == 0:
                yield None
                return
            yield self.read(path)
        finally:
            os.close(fd)

    def discard(self, path: Path) -> None:
        """Remove an imported file; call only inside ``claim`` for that path."""
        path.unlink(missing_ok=True)
        fsync_dir(self.directory)


def fsync_dir(directory: Path) -> None:
    """Make a file's creation, rename or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
