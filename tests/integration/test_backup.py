"""``appliance backup`` and ``restore`` against real Redis and PostgreSQL: a conversation comes back whole into
another database and key prefix (as after a reinstall), a file that is not ours or is damaged changes nothing,
and no password reaches an argv or the output."""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent.settings import AgentSettings
from agent.store.keys import Keys
from agent.store.records import Message, new_message
from agent.store.spool import Spool
from agent.store.store import ConversationStore
from appliance.backup import MANIFEST, PG_DUMP, ConfigFiles, make_backup, read_manifest
from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.restore import restore
from appliance.supervisor import ProcessInfo, Supervisor
from harness.inspect import backlog, conversation_status, stored_ids
from harness.processes import FlusherProcess, settings_env
from harness.servers import PostgresServer, RedisServer, wait_until
from tests.conftest import fresh_database, make_settings

OLD_SECRETS = '[redis]\npassword = "old-redis"\n\n[postgres]\npassword = "old-pg"\n\n[livekit]\napi_secret = "lk-old"\n'


def config_files(directory: Path, config: str, secrets: str) -> ConfigFiles:
    directory.mkdir(parents=True, exist_ok=True)
    files = ConfigFiles(directory / "appliance.toml", directory / "secrets.toml")
    files.config.write_text(config)
    files.secrets.write_text(secrets)
    files.secrets.chmod(0o600)
    return files


async def conversation_in_every_tier(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, workdir: Path
) -> tuple[str, list[Message]]:
    """An interrupted conversation: 10 messages in PostgreSQL, 15 waiting in the stream, 2 in the spool."""
    conv = await store.open("support")
    sent = [await conv.append("user", "alice", f"flushed {i}") for i in range(10)]
    flusher = FlusherProcess(settings, workdir / "flusher").start()
    try:
        wait_until(lambda: backlog(redis_server.client(), settings) == 0, 30, "the stream drained")
    finally:
        assert flusher.terminate() == 0
    sent += [await conv.append("assistant", "agent", f"waiting {i}") for i in range(15)]
    for i in range(2):
        message = new_message(conv.id, "user", "alice", f"spooled {i}", max_content_bytes=999, max_metadata_bytes=99)
        store.spool.write_message(message)
        sent.append(message)
    await conv.close("interrupted")
    return conv.id, sent


async def test_a_conversation_comes_back_whole_into_another_database_and_prefix(
    store: ConversationStore,
    settings: AgentSettings,
    redis_server: RedisServer,
    pg: PostgresServer,
    tmp_path: Path,
) -> None:
    cid, sent = await conversation_in_every_tier(store, settings, redis_server, tmp_path)
    files = config_files(tmp_path / "etc", "[store]\nwindow_size = 20\n", OLD_SECRETS)

    made = make_backup(settings, files, tmp_path / "backup.tar.gz")

    assert stat.S_IMODE(made.path.stat().st_mode) == 0o600
    with tarfile.open(made.path) as tar:
        names = tar.getnames()
        manifest_text = tar.extractfile(MANIFEST).read().decode()  # type: ignore[union-attr]
    assert names[0] == MANIFEST
    assert {PG_DUMP, "redis.jsonl", "config/appliance.toml", "config/secrets.toml"} <= set(names)
    assert made.manifest.migrations == ["001_conversations.sql", "002_dead_letters.sql"]
    assert made.manifest.redis_keys == 3  # the conversation's list, the room's mapping, the stream
    assert len(made.manifest.spool_files) == 1
    assert "old-" not in manifest_text and "lk-old" not in manifest_text

    # A new install: another database, key prefix and spool, with data of its own that the restore replaces.
    target = make_settings(redis_server, pg, fresh_database(pg), tmp_path / "new")
    async with ConversationStore(target) as other:
        await (await other.open("unrelated")).append("user", "bob", "to be replaced")
    target_files = config_files(tmp_path / "new-etc", "", "")

    done = restore(target, target_files, made.path)

    assert done.migrations_applied == []
    assert done.redis_keys == 3
    assert done.spool_files == 1
    assert done.config_files == []  # data only, unless asked
    assert target_files.config.read_text() == ""
    assert stored_ids(target) == sorted(m.id for m in sent[:10])  # the unrelated conversation is gone
    assert conversation_status(target, cid) == "interrupted"
    async with ConversationStore(target) as resumed_store:
        resumed = await resumed_store.open("support")
        assert resumed.id == cid
        assert [m.id for m in resumed.window] == [m.id for m in sent[-20:]]
    flusher = FlusherProcess(target, tmp_path / "new-flusher").start()  # the restored stream and spool drain
    try:
        wait_until(lambda: backlog(redis_server.client(), target) == 0, 30, "the restored stream drained")
        wait_until(lambda: not Spool(target.store.spool_dir).files(), 30, "the restored spool imported")
    finally:
        assert flusher.terminate() == 0
    assert stored_ids(target, cid) == sorted(m.id for m in sent)


async def test_config_comes_back_only_when_asked_and_keeps_this_installs_server_passwords(
    store: ConversationStore, settings: AgentSettings, tmp_path: Path
) -> None:
    await store.open("room")
    files = config_files(tmp_path / "etc", '[store]\nkey_prefix = "appl:"\n', OLD_SECRETS)
    made = make_backup(settings, files, tmp_path / "backup.tar.gz")
    current = '[redis]\npassword = "new-redis"\n\n[postgres]\npassword = "new-pg"\n'
    target_files = config_files(tmp_path / "new-etc", "# fresh install\n", current)

    done = restore(settings, target_files, made.path, with_config=True)

    assert done.config_files == ["appliance.toml", "secrets.toml"]
    assert target_files.config.read_text() == '[store]\nkey_prefix = "appl:"\n'
    secrets = tomllib.loads(target_files.secrets.read_text())
    assert secrets == {
        "redis": {"password": "new-redis"},
        "postgres": {"password": "new-pg"},
        "livekit": {"api_secret": "lk-old"},
    }
    assert stat.S_IMODE(target_files.secrets.stat().st_mode) == 0o600


def rewrite(archive: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of a backup with members replaced (or dropped, for None)."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name in change:
                replaced = change[info.name]
                if replaced is None:
                    continue
                data = replaced
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


async def test_a_file_that_is_not_ours_or_is_damaged_changes_nothing(
    store: ConversationStore, settings: AgentSettings, redis_server: RedisServer, tmp_path: Path
) -> None:
    conv = await store.open("room")
    await conv.append("user", "u", "kept")
    files = config_files(tmp_path / "etc", "", "")
    made = make_backup(settings, files, tmp_path / "backup.tar.gz")
    manifest = json.loads(read_manifest(made.path).encode())
    newer = rewrite(
        made.path,
        tmp_path / "newer.tar.gz",
        {MANIFEST: json.dumps(manifest | {"migrations": [*manifest["migrations"], "999_future.sql"]}).encode()},
    )
    random = tmp_path / "random.bin"
    random.write_bytes(b"\x00not a backup" * 100)
    cases = {
        random: "not an appliance backup (not a tar.gz file)",
        rewrite(made.path, tmp_path / "bare.tar.gz", {MANIFEST: None}): "not an appliance backup (no manifest.json)",
        rewrite(made.path, tmp_path / "alien.tar.gz", {MANIFEST: b'{"format": "x"}'}): "its manifest is not ours",
        rewrite(made.path, tmp_path / "damaged.tar.gz", {PG_DUMP: b"truncated"}): "damaged (postgres.dump does not",
        newer: "migrations this appliance does not know (999_future.sql): upgrade the appliance first",
    }
    await conv.append("user", "u", "after the backup")
    before = stored_ids(settings), backlog(redis_server.client(), settings)
    for path, reason in cases.items():
        with pytest.raises(ApplianceError, match=re.escape(reason)):
            restore(settings, files, path)
    assert (stored_ids(settings), backlog(redis_server.client(), settings)) == before


async def test_a_dump_postgres_refuses_leaves_the_old_database_and_no_scratch_one(
    store: ConversationStore, settings: AgentSettings, pg: PostgresServer, tmp_path: Path
) -> None:
    conv = await store.open("room")
    await conv.append("user", "u", "kept")
    files = config_files(tmp_path / "etc", "", "")
    made = make_backup(settings, files, tmp_path / "backup.tar.gz")
    broken = b"PGDMP" + b"\x00" * 64
    manifest = json.loads(read_manifest(made.path).encode())
    manifest["checksums"][PG_DUMP] = hashlib.sha256(broken).hexdigest()
    bad = rewrite(made.path, tmp_path / "bad.tar.gz", {PG_DUMP: broken, MANIFEST: json.dumps(manifest).encode()})
    before = stored_ids(settings)

    with pytest.raises(ApplianceError, match=r"^pg_restore failed: "):
        restore(settings, files, bad)

    assert stored_ids(settings) == before
    with pg.connect() as conn:
        names = [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
    assert not [n for n in names if "_restore_" in n or "_old_" in n]


class FakeSupervisor(Supervisor):
    """Records what restore asks of supervisord."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"))
        self.calls: list[str] = []
        self.states = {"redis": "RUNNING", "postgres": "RUNNING", "flusher": "RUNNING", "worker": "RUNNING"}
        self.states["worker-alt"] = "STOPPED"

    def processes(self) -> list[ProcessInfo]:
        return [ProcessInfo(n, s, 1, 0, 0, 0, "", "") for n, s in self.states.items()]

    def stop(self, name: str, *, timeout_s: float = 0) -> bool:
        self.calls.append(f"stop {name}")
        return True

    def start(self, name: str, *, wait: bool = True) -> None:
        self.calls.append(f"start {name}")


async def test_the_writers_are_stopped_meanwhile_and_started_again(
    store: ConversationStore, settings: AgentSettings, tmp_path: Path
) -> None:
    await store.open("room")
    files = config_files(tmp_path / "etc", "", "")
    made = make_backup(settings, files, tmp_path / "backup.tar.gz")
    supervisor = FakeSupervisor()

    done = restore(settings, files, made.path, supervisor=supervisor)

    assert supervisor.calls == ["stop worker", "stop flusher", "start flusher", "start worker"]
    assert done.restarted == ["flusher", "worker"]


async def test_cli_backup_then_restore_without_a_password_in_any_argv(
    store: ConversationStore,
    settings: AgentSettings,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conv = await store.open("room")
    await conv.append("user", "u", "hello")
    env = settings_env(settings, tmp_path / "etc") | {"APPLIANCE_CONTROL__RUN_DIR": str(tmp_path / "run")}
    password = settings.postgres.password.get_secret_value()  # type: ignore[union-attr]
    runs: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def spy(args: list[str], **kwargs: Any) -> Any:
        runs.append((list(args), dict(kwargs.get("env") or {})))
        return real_run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    runner = CliRunner()
    target = tmp_path / "out.tar.gz"

    made = runner.invoke(main, ["backup", str(target)], env=env)
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    again = runner.invoke(main, ["backup", str(target)], env=env)
    assert again.exit_code == 1
    assert again.stderr == f"error: {target}: already exists; choose another file name\n"

    refused = runner.invoke(main, ["restore", str(target)], input="n\n", env=env)
    assert refused.exit_code == 1
    restored = runner.invoke(main, ["restore", str(target), "--yes", "--json"], env=env)
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["redis"]["keys"] == len(redis_keys(redis_server, settings))

    not_ours = runner.invoke(main, ["restore", str(tmp_path / "etc" / "appliance.toml"), "--yes"], env=env)
    assert not_ours.exit_code == 1
    assert not_ours.stderr.endswith("appliance.toml: not an appliance backup (not a tar.gz file)\n")

    runs = [(args, child_env) for args, child_env in runs if Path(args[0]).name.startswith("pg_")]
    assert [Path(args[0]).name for args, _env in runs] == ["pg_dump", "pg_restore"]
    for args, child_env in runs:
        assert not any(password in arg for arg in args)
        assert child_env["PGPASSWORD"] == password
    for result in (made, again, refused, restored, not_ours):
        assert password not in result.output


def redis_keys(redis_server: RedisServer, settings: AgentSettings) -> list[bytes]:
    keys = Keys(settings.store.key_prefix)
    found = redis_server.client().scan_iter(match=keys.prefix + "*")
    return [k for k in found if k != keys.flusher_stats.encode()]
