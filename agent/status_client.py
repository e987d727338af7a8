"""Reading a worker's /status: the token it asks for and the one fetch every reader uses (CLI, tests, benchmark).

Kept apart from agent.status so that readers need neither aiohttp nor the worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.request
from typing import Any

from agent.settings import LiveKitSettings


def status_token(livekit: LiveKitSettings) -> str:
    """The bearer token /status asks for; no new secret to keep, and it changes with the API secret."""
    secret = livekit.api_secret.get_secret_value() if livekit.api_secret else ""
    return hmac.new(secret.encode(), b"appliance worker status", hashlib.sha256).hexdigest()


def fetch_status(port: int, livekit: LiveKitSettings, timeout_s: float) -> dict[str, Any]:
    """A worker's /status (every reader uses this); raises OSError or ValueError when it does not answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {status_token(livekit)}"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body
