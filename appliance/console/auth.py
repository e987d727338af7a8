"""Who may use the console: the operator's password (kept as a scrypt hash), signed sessions and one-time links,
and the throttle that slows repeated wrong passwords. Pure logic, no server: tested alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# scrypt's cost: 2^15 x 8 x 1 takes ~50 ms and 32 MiB here: cheap for one login, dear for a guesser.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_PASSWORD = 12


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64): what secrets.toml keeps, never the password."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password must have at least {MIN_PASSWORD} characters")
    salt = os.urandom(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        found = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, _unb64(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


@dataclass(frozen=True)
class Grant:
    """What a session may do: any room as any identity (the operator, logged in), or one room as one identity
    (a link's holder)."""

    kind: str  # "operator" or "link"
    expires_at: float
    csrf: str  # the page sends it back in a header with every state-changing request
    room: str = ""
    identity: str = ""

    def allows(self, room: str, identity: str) -> bool:
        return self.kind == "operator" or (room, identity) == (self.room, self.identity)


class Signer:
    """HMAC-SHA256 over a JSON payload, with a purpose, so that a link cannot pass for a session."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, purpose: str, payload: dict[str, Any]) -> str:
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def unsign(self, purpose: str, token: str) -> dict[str, Any] | None:
        """The payload, if ``token`` was signed here for ``purpose`` and has not expired; else None."""
        body, _, mac = token.partition(".")
        if not mac or not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        try:
            payload: dict[str, Any] = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(payload, dict) or float(payload.get("exp", 0)) < time.time():
            return None
        return payload

    def _mac(self, purpose: str, body: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}:{body}".encode(), hashlib.sha256).digest())


def session_token(signer: Signer, grant: Grant) -> str:
    return signer.sign("session", {**grant.__dict__, "exp": grant.expires_at})


def session_grant(signer: Signer, token: str) -> Grant | None:
    payload = signer.unsign("session", token)
    if payload is None:
        return None
    return Grant(payload["kind"], float(payload["exp"]), payload["csrf"], payload.get("room", ""),
                 payload.get("identity", ""))  # fmt: skip


def link_token(signer: Signer, room: str, identity: str, ttl_s: float) -> str:
    """A one-time link's token: one room, one identity, until it expires or is used."""
    return signer.sign("link", {"room": room, "identity": identity, "exp": time.time() + ttl_s,
                                "nonce": secrets.token_urlsafe(12)})  # fmt: skip


class UsedLinks:
    """The links already used, kept in a file until they expire (a restart of the console forgets none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._used: dict[str, float] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                nonce, _, exp = line.partition(" ")
                if exp and float(exp) > time.time():
                    self._used[nonce] = float(exp)
        self._rewrite()

    def use(self, nonce: str, expires_at: float) -> bool:
        """True the first time; False after. Recorded on disk before it returns."""
        if nonce in self._used:
            return False
        self._used[nonce] = expires_at
        with self.path.open("a") as fh:
            fh.write(f"{nonce} {expires_at}\n")
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(f"{n} {e}\n" for n, e in self._used.items()))
        tmp.replace(self.path)


@dataclass
class Throttle:
    """Wrong passwords from one address: free for the first ``free``, then each next try must wait twice as
    long as the one before (1 s, 2 s, 4 s ... up to ``cap_s``); a right one clears the address."""

    free: int = 3
    cap_s: float = 60.0
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)  # address: (count, last failure)

    def wait_s(self, address: str, now: float | None = None) -> float:
        """How long ``address`` must still wait before its next try (0: it may try now)."""
        count, last = self._failures.get(address, (0, 0.0))
        if count < self.free:
            return 0.0
        delay = min(self.cap_s, 2.0 ** (count - self.free))
        return max(0.0, last + delay - (time.monotonic() if now is None else now))

    def failed(self, address: str, now: float | None = None) -> None:
        count, _ = self._failures.get(address, (0, 0.0))
        self._failures[address] = (count + 1, time.monotonic() if now is None else now)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
