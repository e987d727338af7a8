"""Private Redis and PostgreSQL servers on temporary directories and free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import psycopg
import redis

from agent.settings import PostgresSettings, RedisSettings
from agent.store import acl
from agent.store.acl import AclUser
from harness.tls import TestCA


def wait_until(predicate: Callable[[], object], timeout: float, description: str, interval: float = 0.05) -> None:
    """Poll until ``predicate`` is truthy; fail naming what we waited for."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
            last = None
        except AssertionError:
            raise
        except Exception as exc:  # a server still starting refuses connections: keep polling
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {description}" + (f" (last: {last!r})" if last else ""))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _private_dir(prefix: str, owner: str | None = None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


class RedisServer:
    """redis-server with AOF on, bound to 127.0.0.1 and a unix socket, password protected; with ``tls``, a
    TLS-only port beside them, with that CA's server certificate."""

    def __init__(
        self, *, appendfsync: str = "everysec", maxmemory: str | None = None, tls: TestCA | None = None
    ) -> None:
        self.dir = _private_dir("appliance-redis-")
        self.port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.password = secrets.token_hex(16)
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None
        self._prefixes: set[str] = set()

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    def settings(self, acl_user: AclUser | None = None) -> RedisSettings:
        return RedisSettings(unix_socket=self.socket_path, password=self.password, timeout_s=0.5, acl_user=acl_user)

    def tls_settings(self, ca_file: Path | None = None) -> RedisSettings:
        """As a box elsewhere reaches it: by name, over TLS, the certificate checked against ``ca_file`` (the
        server's own CA by default)."""
        assert self.tls is not None
        return RedisSettings(host="localhost", port=self.tls_port, password=self.password, timeout_s=2,
                             tls=True, tls_ca_file=ca_file or self.tls.ca_file)  # fmt: skip

    def allow_prefix(self, prefix: str) -> None:
        """Give the data plane's ACL users (the appliance's own rules) this key prefix too; kept across restarts."""
        self._prefixes.add(prefix)
        self._apply_acl()

    def _apply_acl(self) -> None:
        for prefix in sorted(self._prefixes):
            for user in get_args(AclUser):
                self.client().execute_command(  # type: ignore[no-untyped-call]
                    "ACL", "SETUSER", user, *acl.rules(self.password, user, prefix)
                )

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def delayed_fsyncs(self) -> int:
        """How often Redis (every start in this dir) logged that it wrote the AOF without waiting for a slow fsync:
        then, under appendfsync everysec, it acknowledged writes a SIGKILL may lose."""
        try:
            log = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return log.count("Asynchronous AOF fsync is taking too long")

    def client(self) -> redis.Redis:
        """One client per server, reused (it reconnects by itself after a restart)."""
        if self._client is None:
            self._client = redis.Redis(unix_socket_path=str(self.socket_path), password=self.password)
        return self._client

    def start(self) -> RedisServer:
        args = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            # Uncompressed, so a test can tell what the AOF's RDB preamble holds (forget's text must be gone).
            "--rdbcompression",
            "no",
            "--requirepass",
            self.password,
            "--daemonize",
            "no",
            "--loglevel",
            "notice",  # the level of "Asynchronous AOF fsync is taking too long"
            "--logfile",
            str(self.log_path),
        ]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "volatile-lru"]
        if self.tls:
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(self.tls.cert_file),
                     "--tls-key-file", str(self.tls.key_file), "--tls-ca-cert-file", str(self.tls.ca_file),
                     "--tls-auth-clients", "no"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), 15, f"redis on {self.socket_path}")
        self._apply_acl()  # users made with ACL SETUSER live in memory only
        return self

    def kill(self) -> None:
        """SIGKILL: what AOF promises is tested against this."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def pg_bindir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them out of PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parts[-2]))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries not found: install the postgresql package")
    return Path(initdb).parent


class PostgresServer:
    """A cluster made by initdb (scram-sha-256), run by pg_ctl as a non-root user when we are root; with ``tls``,
    SSL on with that CA's server certificate."""

    def __init__(self, *, tls: TestCA | None = None) -> None:
        self.user = "postgres" if os.geteuid() == 0 else None
        self.tls = tls
        self.dir = _private_dir("appliance-pg-", self.user)
        self.data = self.dir / "data"
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.bindir = pg_bindir()

    def settings(self, dbname: str = "postgres") -> PostgresSettings:
        return PostgresSettings(
            host="127.0.0.1",
            port=self.port,
            dbname=dbname,
            user="appliance",
            password=self.password,
            connect_timeout_s=2,
        )

    def tls_settings(self, dbname: str = "postgres", ca_file: Path | None = None) -> PostgresSettings:
        """As a box elsewhere reaches it: by name, sslmode verify-full against ``ca_file`` (its own CA's)."""
        assert self.tls is not None
        return self.settings(dbname).model_copy(
            update={"host": "localhost", "sslmode": "verify-full", "sslrootcert": ca_file or self.tls.ca_file}
        )

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname=dbname,
            user="appliance",
            password=self.password,
            autocommit=True,
            connect_timeout=5,
        )

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=True,
            user=self.user,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd=self.dir,
        )

    def start(self) -> PostgresServer:
        if not self.data.exists():
            pwfile = self.dir / "pw"
            pwfile.write_text(self.password)
            if self.user:
                shutil.chown(pwfile, self.user)
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "appliance",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            )
            pwfile.unlink()
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on"
            " -c max_connections=200 -c shared_buffers=128MB"
        )
        if self.tls:
            options += self._ssl_options(self.tls)
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "pg.log"), "-w", "start")
        wait_until(self.ready, 30, f"postgres on 127.0.0.1:{self.port}")
        return self

    def _ssl_options(self, tls: TestCA) -> str:
        """PostgreSQL reads its key only when its own user owns it, mode 0600: copies of the CA's files."""
        for name, source in (("server.pem", tls.cert_file), ("server.key", tls.key_file)):
            shutil.copyfile(source, self.dir / name)
            (self.dir / name).chmod(0o600)
            if self.user:
                shutil.chown(self.dir / name, self.user)
        return f" -c ssl=on -c ssl_cert_file={self.dir / 'server.pem'} -c ssl_key_file={self.dir / 'server.key'}"

    def ready(self) -> bool:
        result = subprocess.run(
            [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def stop(self) -> None:
        if self.postmaster_pid() is not None:
            subprocess.run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                user=self.user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                cwd=self.dir,
            )

    def create_database(self, name: str, template: str | None = None) -> None:
        with self.connect() as conn:
            if template:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'.encode())
            else:
                conn.execute(f'CREATE DATABASE "{name}"'.encode())

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
