"""Where a benchmark runs: private servers or the appliance's own, the settings of each phase, a description of
the machine and its libraries for the report's header, and the clean-up."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import redis
import redis.utils

from agent.settings import AgentSettings, FlusherSettings, SettingsError, StoreSettings, load_settings
from agent.store.migrate import migrate
from bench.figures import quantile
from harness.servers import PostgresServer, RedisServer


class BenchError(Exception):
    """A setup the benchmark refuses to run with, or a phase that did not finish; the message says which."""


@dataclass
class Env:
    """The servers; ``always`` is a second Redis with appendfsync always, if there is one."""

    settings: AgentSettings
    always: AgentSettings | None
    workdir: Path
    tag: str  # in every key prefix, room and table name of this run
    servers: str
    server_pids: dict[str, int] = field(default_factory=dict)  # known for private servers only
    conversations: list[str] = field(default_factory=list)  # every one we created, for the clean-up

    @property
    def mode(self) -> str:
        """The appendfsync of the main Redis (the configured one's, as its settings say)."""
        return self.settings.redis.appendfsync

    def phase(self, name: str, *, always: bool = False) -> AgentSettings:
        """Settings with a key prefix, spool and flusher consumer of this phase's own."""
        base = self.always if always and self.always else self.settings
        store = base.store.model_copy(
            update={"key_prefix": f"bench{self.tag}{name}:", "spool_dir": self.workdir / "spool"}
        )
        flusher = base.flusher.model_copy(update={"consumer": f"bench-{self.tag}-{name}", "stats_every_s": 0.25})
        return base.model_copy(update={"store": store, "flusher": flusher})


def private_env(stack: contextlib.ExitStack, workdir: Path, tag: str) -> Env:
    """Private PostgreSQL (migrated) and two private Redis servers, removed when ``stack`` closes."""
    pg = PostgresServer()
    stack.callback(pg.close)
    pg.start()
    pg.create_database("bench")
    with pg.connect("bench") as conn:
        migrate(conn)
    everysec, always = RedisServer(), RedisServer(appendfsync="always")
    for server in (everysec, always):
        stack.callback(server.close)
        server.start()

    def settings(server: RedisServer) -> AgentSettings:
        return AgentSettings(
            redis=server.settings(),
            postgres=pg.settings("bench"),
            store=StoreSettings(spool_dir=workdir / "spool"),
            flusher=FlusherSettings(),
        )

    pids = {"redis": everysec.proc.pid if everysec.proc else 0, "postgres": pg.postmaster_pid() or 0}
    return Env(
        settings(everysec),
        settings(always),
        workdir,
        tag,
        "private Redis (everysec; always) and PostgreSQL, unix socket and 127.0.0.1",
        pids,
    )


def configured_env(stack: contextlib.ExitStack, workdir: Path, tag: str) -> Env:
    """The running appliance's servers; a private Redis with appendfsync always beside it when we can start one."""
    try:
        settings = load_settings(AgentSettings)
    except SettingsError as exc:
        raise BenchError("; ".join(exc.errors)) from None
    check_local(settings)
    always: AgentSettings | None = None
    if shutil.which("redis-server"):
        server = RedisServer(appendfsync="always")
        stack.callback(server.close)
        server.start()
        always = settings.model_copy(update={"redis": server.settings()})
    return Env(
        settings,
        always,
        workdir,
        tag,
        f"configured Redis ({settings.redis.appendfsync}) and PostgreSQL"
        + ("; private Redis (always)" if always else ""),
    )


def check_local(settings: AgentSettings) -> None:
    """Every packet stays on this machine: refuse servers reached over a network."""
    r, p = settings.redis, settings.postgres
    if r.unix_socket is None and not is_loopback(r.host):
        raise BenchError(f"redis.host: {r.host} is not loopback; the benchmark runs only against local servers")
    if not p.host.startswith("/") and not is_loopback(p.host):
        raise BenchError(f"postgres.host: {p.host} is not loopback; the benchmark runs only against local servers")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pg_kwargs(settings: AgentSettings) -> dict[str, Any]:
    """Keyword arguments of psycopg's connect for these settings."""
    pg = settings.postgres
    return {"conninfo": pg.conninfo(), "password": pg.password.get_secret_value() if pg.password else None}


def redis_client(settings: AgentSettings) -> redis.Redis:
    r = settings.redis
    password = r.password.get_secret_value() if r.password else None
    if r.unix_socket is not None:
        return redis.Redis(unix_socket_path=str(r.unix_socket), password=password, db=r.db)
    return redis.Redis(host=r.host, port=r.port, password=password, db=r.db)


def clean_up(env: Env) -> None:
    """Remove our keys and our conversations (real data lives beside them only with --use-config)."""
    for settings in filter(None, (env.settings, env.always)):
        with contextlib.closing(redis_client(settings)) as client:
            keys = list(client.scan_iter(match=f"bench{env.tag}*", count=1000))
            for start in range(0, len(keys), 500):
                client.unlink(*keys[start : start + 500])
    with psycopg.connect(**pg_kwargs(env.settings), autocommit=True) as conn:
        conn.execute("DELETE FROM messages WHERE conversation_id = ANY(%s)", (env.conversations,))
        conn.execute("DELETE FROM conversations WHERE id = ANY(%s)", (env.conversations,))


def cpu_seconds(pids: dict[str, int], trees: tuple[str, ...] = ("postgres",)) -> dict[str, float]:
    """User + system CPU of each process; for those named in ``trees`` also of its live children (backends)."""
    out = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)] if name in trees else [proc]
            out[name] = sum(p.cpu_times().user + p.cpu_times().system for p in family)
        except psutil.Error:
            continue
    return out


def describe_libraries() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    hiredis = f"with hiredis {version('hiredis')}" if redis.utils.HIREDIS_AVAILABLE else "without hiredis"
    return {
        "redis-py": f"{redis.__version__} ({hiredis})",
        "orjson": orjson.__version__,
        "uuid-utils": version("uuid-utils"),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__} implementation, libpq {psycopg.pq.version()})",
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
    }


def describe_servers(env: Env) -> str:
    with contextlib.closing(redis_client(env.settings)) as client:
        redis_version = str(client.info("server").get("redis_version", "?"))
    with psycopg.connect(**pg_kwargs(env.settings)) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit')"
        ).fetchone()
    assert row is not None
    return f"{env.servers}; Redis {redis_version}; PostgreSQL {row[0]} (fsync {row[1]}, synchronous_commit {row[2]})"


def describe_disk(directory: Path, seconds: float = 0.5) -> str:
    """What one commit's fsync costs here: it bounds every contender that commits each message."""
    probe = directory / "fsync-probe"
    block, latencies = os.urandom(8192), []
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        deadline = time.perf_counter_ns() + int(seconds * 1e9)
        for i in range(5000):
            os.pwrite(fd, block, i * len(block))
            t = time.perf_counter_ns()
            os.fdatasync(fd)
            latencies.append((time.perf_counter_ns() - t) / 1e6)
            if t > deadline:
                break
    finally:
        os.close(fd)
        probe.unlink()
    ordered = sorted(latencies)
    return (
        f"fdatasync of 8 kB in {directory.parent}: p50 {quantile(ordered, 0.5):.3f} ms,"
        f" p99 {quantile(ordered, 0.99):.3f} ms ({len(ordered)} samples)"
    )
