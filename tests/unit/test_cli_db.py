"""``appliance db migrate`` when PostgreSQL cannot be reached: one line naming the server and the fix."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner

from appliance.cli import main

SECRET = "hunter2-do-not-print"


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_postgres_is_one_line_without_the_password(tmp_path: Path) -> None:
    port = closed_port()
    (tmp_path / "appliance.toml").write_text(f"[postgres]\nport = {port}\nconnect_timeout_s = 1\n")
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'[postgres]\npassword = "{SECRET}"\n')
    secrets.chmod(0o600)

    result = CliRunner().invoke(main, ["db", "migrate"])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: cannot connect to PostgreSQL at 127.0.0.1:{port} (Connection refused):"
        " is PostgreSQL running? check postgres.host and postgres.port\n"
    )
    assert SECRET not in result.output
