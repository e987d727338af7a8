"""The worker's status endpoint on loopback: its rooms with their process and memory, counters, draining.

livekit's own health server has only `/` and `/worker`, without pids; `appliance status` reads this one. Room
names can be personal, and loopback is open to every local user, so it answers only a bearer token derived from
the LiveKit API secret (agent.status_client): whoever can read the secrets file can read the rooms.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any

import psutil
from aiohttp import web

from agent.settings import LiveKitSettings
from agent.status_client import status_token

if TYPE_CHECKING:
    from agent.worker import Worker


def memory_mb(pid: int | None) -> dict[str, float | None]:
    """PSS and USS: what a room's process really costs (RSS counts the pages it shares with its siblings)."""
    if pid is None:
        return {"pss_mb": None, "uss_mb": None}
    try:
        info = psutil.Process(pid).memory_full_info()
    except psutil.Error:
        return {"pss_mb": None, "uss_mb": None}
    return {"pss_mb": round(info.pss / 2**20, 1), "uss_mb": round(info.uss / 2**20, 1)}


class StatusServer:
    def __init__(self, worker: Worker, port: int, livekit: LiveKitSettings) -> None:
        self.worker = worker
        self.port = port
        self._authorization = f"Bearer {status_token(livekit)}".encode()
        self.app = web.Application()
        self.app.add_routes([web.get("/status", self.status)])
        self._runner = web.AppRunner(self.app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if self.port == 0:  # tests ask for any free port: learn which
            server: Any = site._server
            self.port = server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        await self._runner.cleanup()

    async def status(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._authorization):
            return web.json_response({"error": "a bearer token is needed (see agent.status_client)"}, status=401)
        return web.json_response(await self.collect())

    async def collect(self) -> dict[str, Any]:
        rooms = self.worker.room_processes()
        memory = await asyncio.to_thread(lambda: [memory_mb(pid) for _, _, pid, _ in rooms])  # psutil off the loop
        conversations = [await self.worker.conversation_of(room, metadata) for room, _, _, metadata in rooms]
        counters = self.worker.redispatcher.counters
        return {
            "worker_id": self.worker.server.id,
            # livekit-agents names its worker "unregistered" until LiveKit accepted it.
            "registered": self.worker.server.id != "unregistered",
            "draining": self.worker.server.draining,
            "rooms": [
                {"room": room, "conversation": conversation, "job_id": job_id, "pid": pid, **mem}
                for (room, job_id, pid, _), mem, conversation in zip(rooms, memory, conversations, strict=True)
            ],
            "counters": {
                "started": counters.started,
                "crashes": dict(counters.crashes),
                "memory_kills": counters.crashes.get("memory", 0),
                "redispatches": dict(counters.redispatches),
                "reconciled": counters.reconciled,
                "given_up": counters.given_up,
                "reconcile_rounds": counters.reconcile_rounds,
            },
        }
