"""Join tokens for front ends: a LiveKit access token that lets one identity join one room."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import timedelta

from agent.settings import LiveKitSettings
from agent.store.records import check_id
from appliance.errors import ApplianceError

DEFAULT_TTL = timedelta(hours=6)
# LiveKit refuses nothing longer, but a leaked token is a room anyone can enter: keep them short-lived.
MAX_TTL = timedelta(days=30)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class JoinToken:
    token: str
    room: str
    identity: str
    url: str  # where the worker reaches LiveKit; a front end elsewhere uses the public name in front of it
    expires_at: float

    def as_dict(self) -> dict[str, object]:
        return {
            "token": self.token,
            "room": self.room,
            "identity": self.identity,
            "url": self.url,
            "expires_at": self.expires_at,
        }


def parse_ttl(text: str) -> timedelta:
    """ "90", "90s", "15m", "6h" or "7d", between one second and MAX_TTL; else an ApplianceError."""
    found = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not found:
        raise ApplianceError(f"--ttl {text!r}: not a duration; use seconds or a number with s, m, h or d (e.g. 6h)")
    ttl = timedelta(seconds=int(found[1]) * _UNITS[found[2] or "s"])
    if not timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise ApplianceError(f"--ttl {text!r}: must be between 1s and {MAX_TTL.days}d")
    return ttl


def join_token(
    livekit: LiveKitSettings, room: str, identity: str, *, ttl: timedelta = DEFAULT_TTL, name: str | None = None
) -> JoinToken:
    """A token to join ``room`` as ``identity`` (publish, subscribe and send data), signed with the API secret."""
    from livekit import api

    check_id("room", room)
    check_id("identity", identity)
    if name is not None:
        check_id("name", name)
    if livekit.api_key is None or livekit.api_secret is None:
        raise ApplianceError(
            "livekit.api_key and livekit.api_secret are not set: put them in secrets.toml"
            " (or APPLIANCE_LIVEKIT__API_KEY and APPLIANCE_LIVEKIT__API_SECRET)"
        )
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True)
    token = (
        api.AccessToken(livekit.api_key.get_secret_value(), livekit.api_secret.get_secret_value())
        .with_identity(identity)
        .with_name(name or identity)
        .with_grants(grants)
        .with_ttl(ttl)
        .to_jwt()
    )
    return JoinToken(token, room, identity, livekit.url, time.time() + ttl.total_seconds())
