"""``appliance backup``: one tar.gz (mode 0600: it holds the secrets) with a PostgreSQL dump, the Redis keys of the
appliance, the spool, the config files, and a manifest that restore checks first.

Redis is exported key by key (DUMP, with each key's TTL) rather than as an RDB file: that needs no restart, does not
touch Redis's files (an AOF would win over a dump.rdb put beside it anyway), takes only the appliance's prefix from a
shared Redis, and restores with RESTORE under whatever prefix the target uses.

Order: spool and Redis before PostgreSQL. The flusher moves entries from those into PostgreSQL and only then
deletes them, so whatever they lose between the copies is already in PostgreSQL when its dump starts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import orjson

from agent.settings import AgentSettings, PostgresSettings, config_path, secrets_path
from agent.store.keys import Keys
from agent.store.spool import SUFFIX
from appliance.errors import ApplianceError
from appliance.masking import mask
from appliance.prometheus_backup import PREFIX, BundledPrometheus, snapshot
from appliance.stores import on_redis, postgres_connection, redis_client

FORMAT = "livekit-appliance-backup"
FORMAT_VERSION = 2  # 2: the bundled Prometheus's data (prometheus_files)
MANIFEST = "manifest.json"
PG_DUMP = "postgres.dump"
REDIS_KEYS = "redis.jsonl"  # one key per line: {"key": suffix after the prefix, "ttl_ms": 0 | n, "dump": base64}
SPOOL = "spool/"
CONFIG = "config/"
CHUNK = 500

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class ConfigFiles:
    """The config file and the secrets file beside it (or where APPLIANCE_SECRETS says)."""

    config: Path
    secrets: Path

    @classmethod
    def of(cls, environ: Mapping[str, str]) -> ConfigFiles:
        return cls(config_path(environ), secrets_path(environ))


@dataclass
class Manifest:
    created_at: float
    appliance_version: str
    hostname: str
    postgres_version: str  # the server's
    dbname: str
    migrations: list[str]  # schema migrations applied in the dumped database
    redis_version: str
    key_prefix: str
    redis_keys: int
    spool_files: list[str] = field(default_factory=list)
    config_files: list[str] = field(default_factory=list)  # names under config/: appliance.toml, secrets.toml
    prometheus_files: list[str] = field(default_factory=list)  # members under prometheus/: its snapshot
    checksums: dict[str, str] = field(default_factory=dict)  # sha256 of every other member
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def decode(cls, raw: bytes, source: Path) -> Manifest:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError
            if int(data["format_version"]) > FORMAT_VERSION:
                raise ApplianceError(
                    f"{source}: made by a newer appliance (backup format {data['format_version']}); upgrade first"
                )
            return cls(**data)
        except (ValueError, TypeError, KeyError):
            raise ApplianceError(f"{source}: not an appliance backup (its manifest is not ours)") from None


@dataclass(frozen=True)
class Backup:
    path: Path
    size: int
    manifest: Manifest

    def as_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "file": str(self.path),
            "bytes": self.size,
            "postgres": {"database": m.dbname, "server": m.postgres_version, "migrations": len(m.migrations)},
            "redis": {"keys": m.redis_keys, "server": m.redis_version, "prefix": m.key_prefix},
            "spool_files": len(m.spool_files),
            "config_files": m.config_files,
        }


def default_name(now: float | None = None) -> Path:
    return Path(time.strftime("appliance-backup-%Y%m%d-%H%M%S.tar.gz", time.localtime(now)))


def make_backup(settings: AgentSettings, files: ConfigFiles, target: Path, *, progress: Progress = quiet) -> Backup:
    """Write the backup to ``target`` (refusing to overwrite), atomically, mode 0600."""
    if target.exists():
        raise ApplianceError(f"{target}: already exists; choose another file name")
    if not target.parent.is_dir():
        raise ApplianceError(f"{target.parent}: no such directory")
    with _workdir(target.parent) as work:
        members: list[str] = []
        spool_files = _copy_spool(settings.store.spool_dir, work)
        members += [SPOOL + name for name in spool_files]
        progress(f"spool: {len(spool_files)} files")
        redis_version, count = _export_redis(settings, work / REDIS_KEYS)
        members.append(REDIS_KEYS)
        progress(f"redis: {count} keys under {settings.store.key_prefix!r}")
        pg_version, migrations = _dump_postgres(settings.postgres, work / PG_DUMP)
        members.append(PG_DUMP)
        progress(f"postgres: {settings.postgres.dbname} dumped ({_size(work / PG_DUMP)})")
        config_files = []
        (work / CONFIG).mkdir()
        for path in (files.config, files.secrets):
            if path.is_file():
                shutil.copyfile(path, work / CONFIG / path.name)
                config_files.append(path.name)
        members += [CONFIG + name for name in config_files]
        progress(f"config: {', '.join(config_files) or 'none found'}")
        prometheus_files = _snapshot_prometheus(settings, work, progress)
        members += prometheus_files
        manifest = Manifest(
            created_at=time.time(),
            appliance_version=_version(),
            hostname=socket.gethostname(),
            postgres_version=pg_version,
            dbname=settings.postgres.dbname,
            migrations=migrations,
            redis_version=redis_version,
            key_prefix=settings.store.key_prefix,
            redis_keys=count,
            spool_files=spool_files,
            config_files=config_files,
            prometheus_files=prometheus_files,
            checksums={name: _sha256(work / name) for name in members},
        )
        _write_archive(target, manifest, work, members)
    return Backup(target, target.stat().st_size, manifest)


def _snapshot_prometheus(settings: AgentSettings, work: Path, progress: Progress) -> list[str]:
    """The bundled Prometheus's data, when the box runs one. Monitoring history is not worth a failed backup of
    the conversations: when Prometheus cannot give a snapshot the backup goes on without it, and says so."""
    prometheus = BundledPrometheus.of(settings)
    if prometheus is None:
        return []
    try:
        names = snapshot(prometheus, work)
    except ApplianceError as exc:
        progress(f"warning: {exc}: the backup holds no metrics history")
        return []
    progress(f"prometheus: snapshot of {len(names)} files ({_size(work / PREFIX)})")
    return names


def read_manifest(archive: Path) -> Manifest:
    """The manifest of a backup, or an ApplianceError saying the file is not one of ours."""
    with open_archive(archive) as tar:
        return manifest_of(tar, archive)


@contextmanager
def open_archive(archive: Path) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 (closed by the caller's with, after the yield)
    except FileNotFoundError:
        raise ApplianceError(f"{archive}: no such file") from None
    except (tarfile.TarError, OSError, EOFError):
        raise ApplianceError(f"{archive}: not an appliance backup (not a tar.gz file)") from None
    with tar:
        yield tar


def manifest_of(tar: tarfile.TarFile, archive: Path) -> Manifest:
    try:
        raw = member(tar, MANIFEST).read()
    except KeyError:
        raise ApplianceError(f"{archive}: not an appliance backup (no {MANIFEST})") from None
    return Manifest.decode(raw, archive)


def member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    """A regular file of the archive (never extracted to a path: names cannot escape anywhere)."""
    info = tar.getmember(name)
    handle = tar.extractfile(info) if info.isfile() else None
    if handle is None:
        raise KeyError(name)
    return handle


def _copy_spool(directory: Path, work: Path) -> list[str]:
    (work / SPOOL).mkdir()
    names = []
    with suppress(FileNotFoundError):
        for path in sorted(directory.iterdir()):
            if not path.name.endswith(SUFFIX):
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # imported and removed meanwhile: PostgreSQL has it
            # A writer may be halfway through its line; only whole lines were acknowledged.
            data = data[: data.rfind(b"\n") + 1]
            if data:
                (work / SPOOL / path.name).write_bytes(data)
                names.append(path.name)
    return names


def _export_redis(settings: AgentSettings, out: Path) -> tuple[str, int]:
    prefix = settings.store.key_prefix
    skip = {Keys(prefix).flusher_stats.encode()}  # a live figure, not data

    def export() -> tuple[str, int]:
        client = redis_client(settings.redis)
        count = 0
        try:
            server = str(client.info("server")["redis_version"])
            with out.open("wb") as fh:
                batch: list[bytes] = []
                for key in client.scan_iter(match=glob_escape(prefix) + "*", count=1000):
                    if key not in skip:
                        batch.append(key)
                    if len(batch) >= CHUNK:
                        count += _dump_keys(client, batch, len(prefix), fh)
                        batch = []
                count += _dump_keys(client, batch, len(prefix), fh)
        finally:
            client.close()
        return server, count

    return on_redis(settings.redis, export)


def _dump_keys(client: Any, keys: list[bytes], prefix_len: int, fh: IO[bytes]) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
        pipe.dump(key)
    replies = pipe.execute()
    count = 0
    for key, ttl, dumped in zip(keys, replies[::2], replies[1::2], strict=True):
        if dumped is None:
            continue  # expired or deleted since the scan
        record = {"key": _b64(key[prefix_len:]), "ttl_ms": max(0, int(ttl)), "dump": _b64(dumped)}
        fh.write(orjson.dumps(record) + b"\n")
        count += 1
    return count


def _dump_postgres(pg: PostgresSettings, out: Path) -> tuple[str, list[str]]:
    with postgres_connection(pg) as conn:
        row = conn.execute("SELECT current_setting('server_version'), current_setting('server_version_num')").fetchone()
        assert row is not None
        server, number = str(row[0]), int(str(row[1]))
        migrations = applied_migrations(conn)
    args = ["--format=custom", "--no-password", f"--file={out}", f"--dbname={pg.conninfo()}"]
    run_pg_tool(pg, "pg_dump", args, server_major=number // 10000)
    return server, migrations


def applied_migrations(conn: Any) -> list[str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    return [str(r[0]) for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version").fetchall()]


def run_pg_tool(pg: PostgresSettings, tool: str, args: list[str], *, server_major: int | None = None) -> None:
    """Run pg_dump or pg_restore with the password in PGPASSWORD, never in argv; a failure is one line."""
    binary = pg_tool(tool, server_major or _server_major(pg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    password = pg.password.get_secret_value() if pg.password is not None else None
    if password is not None:
        env["PGPASSWORD"] = password
    done = subprocess.run(
        [str(binary), *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit status {done.returncode}"]
        reason = lines[-1].removeprefix(f"{tool}: ").strip()
        reason = mask(reason, [password])
        raise ApplianceError(f"{tool} failed: {reason}")


def pg_tool(tool: str, server_major: int) -> Path:
    """The client tool of the server's major version (Debian installs each under /usr/lib/postgresql/<ver>/bin);
    else the oldest newer one (a newer pg_dump reads an older server), else the one on PATH."""
    found: dict[int, Path] = {}
    for candidate in Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"):
        with suppress(ValueError):
            found[int(candidate.parts[-3])] = candidate
    usable = sorted(v for v in found if v >= server_major)
    if usable:
        return found[usable[0]]
    on_path = shutil.which(tool)
    if on_path is None:
        raise ApplianceError(
            f"{tool} for PostgreSQL {server_major} not found: install postgresql-client-{server_major}"
        )
    return Path(on_path)


def _server_major(pg: PostgresSettings) -> int:
    with postgres_connection(pg) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')").fetchone()
    assert row is not None
    return int(str(row[0])) // 10000


def _write_archive(target: Path, manifest: Manifest, work: Path, members: list[str]) -> None:
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            _add(tar, MANIFEST, io.BytesIO(manifest.encode()), len(manifest.encode()))
            for name in members:
                with (work / name).open("rb") as fh:
                    _add(tar, name, fh, (work / name).stat().st_size)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _add(tar: tarfile.TarFile, name: str, fh: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    tar.addfile(info, fh)


@contextmanager
def _workdir(beside: Path) -> Iterator[Path]:
    """A private directory (0700) beside the target: a large dump does not fill /tmp, and the data stays put."""
    try:
        path = Path(tempfile.mkdtemp(prefix=".appliance-backup-", dir=beside))
    except PermissionError:
        raise ApplianceError(f"{beside}: permission denied; write the backup elsewhere or run as root") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _size(path: Path) -> str:
    """A file's size, or a directory's (its files'), for people."""
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    size = float(sum(f.stat().st_size for f in files))
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def glob_escape(prefix: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix)


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _version() -> str:
    try:
        return version("livekit-appliance")
    except PackageNotFoundError:
        return "unknown"
