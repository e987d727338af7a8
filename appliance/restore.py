"""``appliance restore FILE``: put a backup's data back (PostgreSQL, the Redis keys, the spool) into the stores the
current settings name, and with ``with_config`` its config files too.

Nothing changes before the whole file is checked: its manifest, every member's checksum, a schema this appliance
knows. PostgreSQL is restored into a scratch database and swapped in only once complete and migrated, so a restore
that fails leaves the old data. The workers and the flusher are stopped meanwhile (through supervisord, when it
runs) and started again afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import stat
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import sql
from redis.exceptions import ResponseError

from agent.resources import migrations
from agent.settings import AgentSettings, PostgresSettings
from agent.store.migrate import migrate
from agent.store.spool import SUFFIX
from appliance.backup import (
    CHUNK,
    CONFIG,
    PG_DUMP,
    REDIS_KEYS,
    SPOOL,
    ConfigFiles,
    Manifest,
    Progress,
    glob_escape,
    manifest_of,
    member,
    open_archive,
    quiet,
    run_pg_tool,
)
from appliance.errors import ApplianceError
from appliance.files import write_atomic
from appliance.programs import WRITERS
from appliance.prometheus_backup import BundledPrometheus, put_back
from appliance.stores import on_redis, postgres_connection, redis_client

if TYPE_CHECKING:
    from appliance.supervisor import Supervisor

# Secrets that belong to this install's own servers, not to the data: kept when the backup's config comes back.
SERVER_SECRETS = (("redis", "password"), ("postgres", "password"))


@dataclass
class Restored:
    file: Path
    manifest: Manifest
    migrations_applied: list[str] = field(default_factory=list)
    redis_keys: int = 0
    spool_files: int = 0
    config_files: list[str] = field(default_factory=list)
    prometheus_files: int = 0
    restarted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "made_at": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.manifest.created_at)),
            "made_on": self.manifest.hostname,
            "postgres": {"database": self.manifest.dbname, "migrations_applied": self.migrations_applied},
            "redis": {"keys": self.redis_keys},
            "spool_files": self.spool_files,
            "config_files": self.config_files,
            "prometheus_files": self.prometheus_files,
            "restarted": self.restarted,
        }


def restore(
    settings: AgentSettings,
    files: ConfigFiles,
    archive: Path,
    *,
    with_config: bool = False,
    supervisor: Supervisor | None = None,
    progress: Progress = quiet,
) -> Restored:
    """Replace the appliance's data with the backup's; see the module's docstring."""
    with open_archive(archive) as tar:
        manifest = manifest_of(tar, archive)
        check(tar, manifest, archive)
        out = Restored(archive, manifest)
        stopped = _stop_writers(supervisor, settings.worker.drain_timeout_s + 30.0, progress)
        try:
            out.migrations_applied = _restore_postgres(settings.postgres, tar)
            progress(f"postgres: {settings.postgres.dbname} restored from the backup of {manifest.dbname}")
            out.redis_keys = _restore_redis(settings, tar)
            progress(f"redis: {out.redis_keys} keys restored under {settings.store.key_prefix!r}")
            out.spool_files = _restore_spool(settings.store.spool_dir, tar, manifest)
            progress(f"spool: {out.spool_files} files")
            if with_config:
                out.config_files = _restore_config(files, tar, manifest)
                progress(f"config: {', '.join(out.config_files) or 'none in the backup'}")
        finally:
            out.restarted = _start(supervisor, stopped, progress)
        out.prometheus_files = _restore_prometheus(settings, tar, manifest, supervisor, progress)
    return out


def _restore_prometheus(
    settings: AgentSettings, tar: tarfile.TarFile, manifest: Manifest, supervisor: Supervisor | None, progress: Progress
) -> int:
    """The metrics history, last and apart: Prometheus alone is stopped for it, after the conversations are back."""
    if not manifest.prometheus_files:
        return 0
    prometheus = BundledPrometheus.of(settings)
    if prometheus is None:
        progress("prometheus: the backup's metrics history is not restored: this box runs no bundled Prometheus")
        return 0
    stopped = _stop(supervisor, ["prometheus"], 90.0, progress)
    try:
        put_back(prometheus.data_dir, tar, manifest.prometheus_files)
    finally:
        _start(supervisor, stopped, progress)
    progress(f"prometheus: {len(manifest.prometheus_files)} files of metrics history restored")
    return len(manifest.prometheus_files)


def check(tar: tarfile.TarFile, manifest: Manifest, archive: Path) -> None:
    """Every member present and intact, and a schema this appliance can migrate from."""
    expected = {PG_DUMP, REDIS_KEYS} | {SPOOL + n for n in manifest.spool_files}
    expected |= {CONFIG + n for n in manifest.config_files} | set(manifest.prometheus_files)
    if not expected <= manifest.checksums.keys():
        raise ApplianceError(f"{archive}: not an appliance backup (its manifest lists no checksum for some files)")
    for name, wanted in manifest.checksums.items():
        digest = hashlib.sha256()
        try:
            with member(tar, name) as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        except (KeyError, tarfile.TarError, OSError, EOFError):
            raise ApplianceError(f"{archive}: damaged ({name} is missing or unreadable)") from None
        if digest.hexdigest() != wanted:
            raise ApplianceError(f"{archive}: damaged ({name} does not match its checksum)")
    known = {name for _version, name, _sql in migrations()}
    newer = [name for name in manifest.migrations if name not in known]
    if newer:
        raise ApplianceError(
            f"{archive}: its database has migrations this appliance does not know ({', '.join(newer)}):"
            " upgrade the appliance first"
        )


def _stop_writers(supervisor: Supervisor | None, timeout_s: float, progress: Progress) -> list[str]:
    return _stop(supervisor, list(WRITERS), timeout_s, progress)


def _stop(supervisor: Supervisor | None, names: list[str], timeout_s: float, progress: Progress) -> list[str]:
    """Stop those of ``names`` that run, in that order; the ones stopped."""
    if supervisor is None:
        return []
    from appliance.supervisor import SupervisorDown

    try:
        present = {p.name: p for p in supervisor.processes()}
    except SupervisorDown:
        return []  # the appliance is not running: nothing writes
    running = [n for n in names if n in present and present[n].state in ("RUNNING", "STARTING", "BACKOFF")]
    stopped: list[str] = []
    for name in running:
        progress(f"stopping {name}")
        if not supervisor.stop(name, timeout_s=timeout_s):
            _start(supervisor, stopped, progress)
            raise ApplianceError(f"{name} did not stop within {timeout_s:.0f}s; nothing was restored")
        stopped.append(name)
    return stopped


def _start(supervisor: Supervisor | None, stopped: list[str], progress: Progress) -> list[str]:
    if supervisor is None:
        return []
    for name in reversed(stopped):
        progress(f"starting {name}")
        supervisor.start(name)
    return list(reversed(stopped))


def _restore_postgres(pg: PostgresSettings, tar: tarfile.TarFile) -> list[str]:
    """Restore into a scratch database, migrate it, then swap it in for the current one; returns the migrations
    applied on top of the backup's schema."""
    if pg.dbname == "postgres":
        raise ApplianceError("postgres.dbname is 'postgres': restore replaces the whole database, never that one")
    maintenance = pg.model_copy(update={"dbname": "postgres"})
    scratch = pg.model_copy(update={"dbname": f"{pg.dbname[:40]}_restore_{uuid.uuid4().hex[:8]}"})
    with _extracted(tar, PG_DUMP) as dump:
        _admin(maintenance, "CREATE DATABASE {} TEMPLATE template0", scratch.dbname)
        try:
            # --no-owner: the objects belong to whoever restores, even if the backup's role had another name.
            args = ["--no-owner", "--no-acl", "--exit-on-error", "--single-transaction", "--no-password"]
            run_pg_tool(scratch, "pg_restore", [*args, f"--dbname={scratch.conninfo()}", str(dump)])
            with postgres_connection(scratch) as conn:
                applied = migrate(conn)
            _swap(maintenance, scratch.dbname, pg.dbname)
        except BaseException:
            with suppress(ApplianceError, psycopg.Error):
                _admin(maintenance, "DROP DATABASE IF EXISTS {} WITH (FORCE)", scratch.dbname)
            raise
    return applied


def _swap(maintenance: PostgresSettings, restored: str, current: str) -> None:
    """Rename the restored database to the current one's name, and drop the old one."""
    old = f"{current[:40]}_old_{uuid.uuid4().hex[:8]}"
    with postgres_connection(maintenance) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (current,)).fetchone()
        if exists:
            _execute(conn, "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", current)
            for _attempt in range(100):
                # Connections left (a pool, another box's worker) would block the rename: end them.
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (current,),
                )
                try:
                    _execute(conn, "ALTER DATABASE {} RENAME TO {}", current, old)
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.1)
            else:
                _execute(conn, "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", current)
                raise ApplianceError(f"database {current} stays in use; stop what connects to it and retry")
        _execute(conn, "ALTER DATABASE {} RENAME TO {}", restored, current)
        if exists:
            _execute(conn, "DROP DATABASE {} WITH (FORCE)", old)


def _admin(pg: PostgresSettings, statement: str, *names: str) -> None:
    with postgres_connection(pg) as conn:
        _execute(conn, statement, *names)


def _execute(conn: psycopg.Connection[tuple[object, ...]], statement: str, *names: str) -> None:
    try:
        conn.execute(sql.SQL(statement).format(*(sql.Identifier(n) for n in names)))
    except psycopg.errors.InsufficientPrivilege:
        raise ApplianceError(
            "restore needs to create, rename and drop databases: postgres.user lacks that privilege"
            " (CREATEDB and ownership of the database; the appliance's own PostgreSQL grants it)"
        ) from None


def _restore_redis(settings: AgentSettings, tar: tarfile.TarFile) -> int:
    """Replace every key under the current prefix with the backup's (renamed if the prefix differs)."""
    prefix = settings.store.key_prefix.encode()

    def replace() -> int:
        client = redis_client(settings.redis)
        try:
            stale = list(client.scan_iter(match=glob_escape(settings.store.key_prefix) + "*", count=1000))
            for start in range(0, len(stale), CHUNK):
                client.unlink(*stale[start : start + CHUNK])
            count = 0
            pipe = client.pipeline(transaction=False)
            with member(tar, REDIS_KEYS) as fh:
                for line in fh:
                    record = orjson.loads(line)
                    key = prefix + base64.b64decode(record["key"])
                    pipe.restore(key, int(record["ttl_ms"]), base64.b64decode(record["dump"]), replace=True)
                    count += 1
                    if count % CHUNK == 0:
                        _execute_restores(pipe, client)
            _execute_restores(pipe, client)
            return count
        finally:
            client.close()

    return on_redis(settings.redis, replace)


def _execute_restores(pipe: Any, client: Any) -> None:
    try:
        pipe.execute()
    except ResponseError as exc:
        server = client.info("server")["redis_version"]
        raise ApplianceError(
            f"Redis {server} refused the backup's keys ({exc}): restore into Redis 7 or newer"
        ) from None


def _restore_spool(directory: Path, tar: tarfile.TarFile, manifest: Manifest) -> int:
    """Replace the spool files with the backup's; the flusher imports them."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = directory.stat()
    for path in directory.iterdir():
        if path.name.endswith(SUFFIX):
            path.unlink(missing_ok=True)
    for name in manifest.spool_files:
        with member(tar, SPOOL + name) as fh:
            write_atomic(
                directory / f"restored-{uuid.uuid4().hex[:12]}{SUFFIX}",
                fh.read(),
                mode=0o600,
                owner=(owner.st_uid, owner.st_gid),
            )
    return len(manifest.spool_files)


def _restore_config(files: ConfigFiles, tar: tarfile.TarFile, manifest: Manifest) -> list[str]:
    """The backup's config and secrets files, keeping this install's own server passwords."""
    import tomlkit

    written = []
    for name in manifest.config_files:
        with member(tar, CONFIG + name) as fh:
            data = fh.read()
        if name == files.secrets.name:
            target, mode = files.secrets, 0o600
            data = _keep_server_secrets(data, files.secrets, tomlkit)
        elif name == files.config.name:
            target, mode = files.config, 0o640
        else:
            continue
        if target.exists():  # keep the mode and owner the installer gave it
            like = target.stat()
            mode = stat.S_IMODE(like.st_mode) & (0o600 if target == files.secrets else 0o777)
        else:
            like = target.parent.stat()
        write_atomic(target, data, mode=mode, owner=(like.st_uid, like.st_gid))
        written.append(name)
    return written


def _keep_server_secrets(backup: bytes, current_file: Path, tomlkit: Any) -> bytes:
    doc = tomlkit.parse(backup.decode())
    try:
        current = tomlkit.parse(current_file.read_text())
    except FileNotFoundError:
        return backup
    for section, key in SERVER_SECRETS:
        value = current.get(section, {}).get(key)
        if value is None:
            continue
        if section not in doc:
            doc[section] = tomlkit.table()
        doc[section][key] = value
    return str(tomlkit.dumps(doc)).encode()


@contextmanager
def _extracted(tar: tarfile.TarFile, name: str) -> Iterator[Path]:
    """A member copied to a private temporary file, for a tool that reads a path."""
    directory = Path(tempfile.mkdtemp(prefix="appliance-restore-"))
    try:
        path = directory / Path(name).name
        with member(tar, name) as src, path.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)
