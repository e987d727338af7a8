"""The flusher's consumer name: one per install (kept in its spool directory), the same across restarts."""

from __future__ import annotations

import socket
from pathlib import Path

from agent.flusher import install_consumer


def test_the_same_install_keeps_its_name_and_another_install_gets_its_own(tmp_path: Path) -> None:
    first = install_consumer(tmp_path / "one" / "spool")
    assert first.startswith(socket.gethostname() + "-")
    assert install_consumer(tmp_path / "one" / "spool") == first  # a restarted flusher reads its own pending
    assert install_consumer(tmp_path / "two" / "spool") != first  # two installs on one host never collide
    assert [p.name for p in (tmp_path / "one" / "spool").iterdir()] == ["flusher-id"]  # no temporary file left
