"""Upgrade: installing a newer checkout over a running appliance applies its new migration and restarts the
worker gracefully; a conversation open across the upgrade loses nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg

from harness.appliance import EXAMPLES, REPO, WHEELHOUSE, InstalledAppliance, install_code
from harness.fake_openai import in_thread, order_questions
from tests.system.conftest import Join

MIGRATION = "900_upgrade_probe.sql"  # numbered past every real migration


def newer_checkout(tmp_path: Path) -> Path:
    """This checkout's files plus a new migration: what the next commit would bring."""
    newer = tmp_path / "newer"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    for name in files:
        if (REPO / name).is_file():
            (newer / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, newer / name)
    (newer / "agent" / "sql" / "migrations" / MIGRATION).write_text("CREATE TABLE upgrade_probe (id integer);\n")
    return newer


def held(answer: str) -> int:
    found = re.search(r"holds (\d+) messages", answer)
    assert found, answer
    return int(found.group(1))


async def test_upgrade_applies_the_migration_and_restarts_the_worker_gracefully(
    new_appliance: Callable[..., InstalledAppliance], join: Join, tmp_path: Path
) -> None:
    installed = new_appliance()
    installed.install()
    alice = await join(installed, "upgrade-room", "alice")
    await alice.greeting()
    await alice.send("before the upgrade")
    await alice.reply_containing("alice: before the upgrade")
    install_code(newer_checkout(tmp_path))
    try:
        result = installed.install()
    finally:
        install_code(REPO)
    assert f"schema ({MIGRATION} applied)" in result.stderr, result.stderr
    assert "worker, gracefully (now worker-alt)" in result.stderr, result.stderr
    # The programs that run the appliance's own code restart with it (appliance/programs.py: ours).
    assert "restarted: metrics, console, flusher, worker" in result.stderr, result.stderr
    pg = installed.settings.postgres
    password = pg.password.get_secret_value() if pg.password else None
    with psycopg.connect(pg.conninfo(), password=password) as conn:
        assert conn.execute("SELECT to_regclass('upgrade_probe')").fetchone() == ("upgrade_probe",)
    # The old worker drained and closed the room; the new one resumed it with every message.
    await alice.reply_containing("I'm back", 60)
    await alice.send("after the upgrade")
    answer = await alice.reply_containing("alice: after the upgrade")
    assert held(answer) == 5, answer


async def test_the_operators_agent_survives_an_upgrade(
    new_appliance: Callable[..., InstalledAppliance], join: Join, tmp_path: Path
) -> None:
    """Installed again for the new appliance from its kept wheels (offline), checked, and still the one running."""
    with in_thread("sk-upgrade-models") as fake:
        fake.tool_script = order_questions
        installed = new_appliance()
        installed.use_models(fake, openai_model="up-1")
        installed.install()
        installed.run("agent", "install", str(EXAMPLES / "order-desk"), "--no-index", "--find-links", str(WHEELHOUSE),
                      timeout=600)  # fmt: skip
        before = json.loads(installed.run("agent", "status", "--json").stdout)["agent"]
        assert "installed again" not in installed.install().stderr  # the same appliance again: nothing to do
        install_code(newer_checkout(tmp_path))
        try:
            result = installed.install()
        finally:
            install_code(REPO)
        assert "agent order-desk 1.0.0 (installed again for this appliance, from its wheels)" in result.stderr
        status = json.loads(installed.run("agent", "status", "--json").stdout)
        after = status["agent"]
        assert (after["name"], after["version"], after["factory"]) == ("order-desk", "1.0.0", "order_desk.agent:build")
        assert after["directory"] != before["directory"] and after["built_for"] != before["built_for"]
        assert status["previous"]["directory"] == before["directory"]  # a rollback goes back to it
        alice = await join(installed, "after-upgrade", "alice")
        await alice.greeting()
        await alice.send("where is my order A-1001?")
        assert "Order A-1001 for alice" in await alice.reply_containing("said:", 30)
