"""The shared stores of a worker box as an operator writes them (`install --redis-url`, `--postgres-dsn`), turned
into settings. Passwords never ride in them: a command line is readable by every local user (/proc/*/cmdline) and
kept in shell histories, so a URL or DSN holding one is refused, and the password comes from a file."""

from __future__ import annotations

import urllib.parse
from typing import Any

# What a DSN may set: the rest of libpq's keywords (passfile, service, ...) the appliance does not read.
DSN_KEYS = {"host", "port", "dbname", "user", "sslmode", "sslrootcert"}


def redis_settings(url: str) -> dict[str, Any]:
    """``redis[s]://[user@]host[:port][/db]`` as [redis] settings (rediss: TLS, the certificate verified)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:  # first: no message below may echo it
        raise ValueError("--redis-url holds a password: give it with --redis-password-file instead")
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"--redis-url: use redis:// or rediss:// (TLS), not {parts.scheme or 'no scheme'}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"--redis-url {url!r}: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"--redis-url {url!r}: no host")
    if parts.query or parts.fragment:
        raise ValueError(f"--redis-url {url!r}: no query or fragment (the CA is --redis-ca-file)")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"--redis-url {url!r}: the path is the database number, not {db!r}")
    values: dict[str, Any] = {"host": parts.hostname, "port": port or 6379, "db": int(db)}
    values["tls"] = parts.scheme == "rediss"
    if parts.username:
        values["username"] = urllib.parse.unquote(parts.username)
    return values


def postgres_settings(dsn: str) -> dict[str, Any]:
    """A libpq DSN (``postgresql://user@host:port/dbname?sslmode=verify-full&sslrootcert=...`` or ``key=value``
    pairs) as [postgres] settings."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        given = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        raise ValueError(f"--postgres-dsn: not a libpq connection string ({str(exc).splitlines()[0]})") from None
    if "password" in given:
        raise ValueError("--postgres-dsn holds a password: give it with --postgres-password-file instead")
    unknown = sorted(set(given) - DSN_KEYS)
    if unknown:
        raise ValueError(f"--postgres-dsn: {', '.join(unknown)} not supported (only {', '.join(sorted(DSN_KEYS))})")
    if not given.get("host"):
        raise ValueError("--postgres-dsn: no host")
    values: dict[str, Any] = dict(given)
    if "port" in values:
        values["port"] = int(values["port"])
    return values
