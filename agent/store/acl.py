"""The Redis ACL users the appliance's own Redis gives its programs and its command line.

Each may run exactly the commands it uses, on its own key prefix only, so a bug cannot FLUSHALL, reconfigure Redis
or touch another appliance's keys. The threat is bugs, not hostile agent code: that runs as the same OS user and
can read secrets.toml. One secret serves every user: each password is derived from redis.password (Redis'
default user's, left to an operator's redis-cli).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

AclUser = Literal["worker", "flusher", "cli"]

# Scripts run by SHA, loaded on a miss (a pipeline asks first).
_COMMON = ("evalsha", "script|load", "script|exists")

# Redis checks each call a script makes against its caller's ACL, so the scripts' commands are listed too.
COMMANDS: dict[AclUser, tuple[str, ...]] = {
    "worker": (
        *_COMMON,
        # append.lua, reseed.lua, lifecycle.lua: the conversation's list, the room's mapping, the stream
        *("exists", "rpush", "lset", "lpop", "ltrim", "lpush", "lrange", "del", "expire", "hset", "xadd"),
        # settle.lua and the room's mapping; resume's scan of the stream
        *("hget", "hmget", "xrange"),
        # redispatch: the room's dispatch lock (set, then claim.lua renews or releases it)
        *("set", "get", "pexpire"),
    ),
    "flusher": (
        *_COMMON,
        # the consumer group (group.lua), its reads, acknowledgements and deletes, stale entries of dead flushers
        *("xgroup|create", "xreadgroup", "xautoclaim", "xack", "xdel", "xlen", "xrange"),
        # dead letters; stats.lua; settle.lua; lists dropped after a spool import
        *("xadd", "del", "hset", "hget", "expire"),
    ),
    # The control plane: the `appliance` command and the exporter.
    "cli": (
        *_COMMON,
        # status, doctor and the exporter: Redis' figures, the stream's and the flusher's
        *("info", "dbsize", "xlen", "hgetall", "xinfo|groups", "xinfo|consumers", "xinfo|stream"),
        # backup and restore: every key of the prefix
        *("scan", "pttl", "dump", "restore", "unlink"),
        # forget: the conversation's entries, lists and room mappings (a transaction on the mapping), both
        # streams rebuilt (compact.lua), then the append-only file rewritten
        *("xrange", "xdel", "xpending", "del", "exists", "hget", "watch", "multi", "exec", "unwatch", "discard"),
        *("xadd", "xgroup|create", "xsetid", "bgrewriteaof"),
    ),
}


def password(master: str, user: AclUser) -> str:
    """The user's password, derived from redis.password: nothing more to keep, rotate or leak."""
    return hmac.new(master.encode(), f"appliance redis acl user {user}".encode(), hashlib.sha256).hexdigest()


def rules(master: str, user: AclUser, key_prefix: str) -> list[str]:
    """ACL SETUSER rules (also a redis.conf ``user`` line): the password only as its SHA-256."""
    digest = hashlib.sha256(password(master, user).encode()).hexdigest()
    commands = [f"+{command}" for command in COMMANDS[user]]
    return ["on", f"#{digest}", f"~{key_prefix}*", "resetchannels", "-@all", *commands]
