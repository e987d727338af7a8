"""Test 9: `appliance backup`, the appliance removed with all its data, a new install, `appliance restore`: a
conversation resumes with all its messages, and the bundled Prometheus has the first box's history."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.supervisor import Supervisor
from harness.appliance import InstalledAppliance
from harness.inspect import connect
from harness.prometheus import PrometheusAPI
from harness.servers import wait_until


def keep_rooms_open(installed: InstalledAppliance) -> None:
    """A room's process outlives the chat client by ten minutes, so its conversation is still open (not ended,
    which a later room of that name would not resume) when the backup is made."""
    config = installed.config_file
    config.write_text(config.read_text().replace("departure_timeout_s = 5\n", "departure_timeout_s = 600\n"))


def chat(installed: InstalledAppliance, room: str, lines: list[str], workdir: Path) -> list[str]:
    script = workdir / f"{room}-{len(lines)}.txt"
    script.write_text("".join(f"{line}\n" for line in lines))
    done = installed.run("chat", room, "--identity", "carol", "--script", str(script), timeout=180)
    return done.stdout.splitlines()


def stored(installed: InstalledAppliance, room: str) -> tuple[str, list[str]]:
    """The room's conversation id and its messages' contents, from PostgreSQL (nothing before it has them)."""
    with connect(installed.settings) as conn:
        row = conn.execute("SELECT id FROM conversations WHERE room = %s", (room,)).fetchone()
        if row is None:
            return "", []
        rows = conn.execute("SELECT content FROM messages WHERE conversation_id = %s ORDER BY id", row).fetchall()
    return str(row[0]), [str(r[0]) for r in rows]


@pytest.mark.slow
def test_backup_reinstall_restore_resumes_the_conversation_with_all_its_messages(
    new_appliance: Callable[..., InstalledAppliance], tmp_path: Path
) -> None:
    first = new_appliance()
    keep_rooms_open(first)
    first.install()
    said = chat(first, "support", ["one", "two", "three"], tmp_path)
    assert "holds 6 messages" in said[-1], said
    wait_until(lambda: len(stored(first, "support")[1]) == 7, 30, "the 7 messages flushed to PostgreSQL")
    conversation, before = stored(first, "support")
    history = PrometheusAPI(f"http://127.0.0.1:{first.settings.metrics.prometheus_port}")
    wait_until(lambda: history.values("appliance_flusher_persisted_total") == [7.0], 60, "Prometheus to see them")
    seen_at = time.time()
    archive = tmp_path / "backup.tar.gz"
    made = first.run("backup", str(archive))
    assert "prometheus: snapshot of" in made.stderr, made.stderr
    layout = first.layout
    first.run("uninstall", "--purge", "--yes")
    for gone in (layout.etc_dir, layout.data_dir, layout.log_dir):
        assert not gone.exists(), gone
    assert not Supervisor(layout.supervisor_socket).answers()

    second = new_appliance()  # other ports, other passwords, another LiveKit key
    keep_rooms_open(second)
    second.install()
    restored = json.loads(second.run("restore", str(archive), "--yes", "--json").stdout)
    assert restored["restarted"] == ["flusher", "worker"] and restored["prometheus_files"] > 0
    # The first box's figures, at a time only it was running, are in the second box's Prometheus.
    now = PrometheusAPI(f"http://127.0.0.1:{second.settings.metrics.prometheus_port}")
    wait_until(now.ready, 60, "the restored Prometheus ready")
    assert now.values("appliance_flusher_persisted_total", at=seen_at) == [7.0]
    said = chat(second, "support", ["four"], tmp_path)

    assert said[0] == f"agent: {second.settings.worker.resume_greeting}"
    assert "holds 9 messages" in said[-1], said  # the 7 of before, the resume greeting and "four"
    wait_until(lambda: len(stored(second, "support")[1]) == 10, 30, "the 10 messages flushed to PostgreSQL")
    resumed, after = stored(second, "support")
    assert resumed == conversation
    assert after[:7] == before
