"""Re-dispatch: LiveKit's open-source server never dispatches a room again when its agent dies, so we do.

Two paths: at once when one of our room processes dies abnormally, and a reconciler that periodically finds
rooms with humans and no agent (e.g. after the worker itself was killed, or a room created while it was down).
Never two agents in one room: a room's dispatch lock, shared by every worker on this Redis, is owned (a token per
worker process; only the owner renews or releases it). Whoever dispatches a room holds it for dispatch_grace_s;
the worker that accepts the room's job then claims it and renews the claim while it serves the room, however long
its pool takes to give the room a process, so no other worker dispatches it again. A worker that dies stops
renewing: its rooms' claims lapse within dispatch_grace_s, and they are taken over.

A whole box that dies leaves its agents in LiveKit's rooms as ghosts for a while (LiveKit drops a participant
whose connection broke only after its own timeout, ~20 s), and its claims for up to dispatch_grace_s. So each
worker also keeps a heartbeat (a key with a HEARTBEAT_TTL_S lifetime, renewed every second): a room whose agents'
claim belongs to a worker without a heartbeat for orphan_after_s is an orphan too. Its ghosts are removed and the
lock is taken over by one reconciler only (takeover.lua: only while it is still the dead worker's). An agent no
worker of ours claimed (another deployment's), or one of an older worker that keeps no heartbeat, is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections import Counter, deque
from contextlib import suppress
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from livekit import api
from livekit.protocol import agent as agent_proto
from livekit.protocol import models

from agent.logs import brief
from agent.resources import lua
from agent.settings import WorkerSettings
from agent.store.keys import digest
from agent.topics import STATE_TOPIC

log = logging.getLogger("agent.redispatch")
AGENT_KIND = models.ParticipantInfo.Kind.AGENT
HEARTBEAT_EVERY_S = 1.0
# Three missed beats: a worker slower than that to reach Redis is taken for dead, and then still has
# orphan_after_s to beat again before its rooms are taken over.
HEARTBEAT_TTL_S = 3.0
# Ends the token of a worker that keeps a heartbeat: a claim of an older worker (during an upgrade's graceful
# restart, the one draining) has none, and is respected until it lapses.
HEARTBEAT_MARK = ":hb"


@dataclass
class Counters:
    started: int = 0  # room processes given a room
    crashes: Counter[str] = field(default_factory=Counter)  # by cause: killed, memory, exit
    redispatches: Counter[str] = field(default_factory=Counter)  # by the cause of the death they follow
    given_up: int = 0  # rooms not revived any more: their agent died too often
    reconciled: int = 0  # rooms found without an agent and dispatched by the reconciler
    reconcile_rounds: int = 0  # passes of the reconciler over every room: it is alive and looking


class Redispatcher:
    def __init__(self, lkapi: api.LiveKitAPI, redis: aioredis.Redis, settings: WorkerSettings, key_prefix: str) -> None:
        self.lkapi = lkapi
        self.redis = redis
        self.settings = settings
        self.key_prefix = key_prefix
        self.counters = Counters()
        # Unique per worker process, even for two workers of one host or a restarted one with the same pid.
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}{HEARTBEAT_MARK}"
        self._owned = redis.register_script(lua("claim"))
        self._takeover = redis.register_script(lua("takeover"))
        self._deaths: dict[str, deque[float]] = {}
        self._orphan_since: dict[str, float] = {}

    def record_death(self, room: str, cause: str) -> bool:
        """Count a death; False when the room has died too often to be revived."""
        self.counters.crashes[cause] += 1
        now = time.monotonic()
        deaths = self._deaths.setdefault(room, deque())
        deaths.append(now)
        while deaths and now - deaths[0] > self.settings.death_window_s:
            deaths.popleft()
        if len(deaths) >= self.settings.max_deaths:
            if len(deaths) == self.settings.max_deaths:
                self.counters.given_up += 1
            log.error(
                "room %s: agent died %d times in %.0fs; not dispatching it again",
                room,
                len(deaths),
                self.settings.death_window_s,
            )
            return False
        return True

    def given_up(self, room: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._deaths.get(room, ()) if now - t <= self.settings.death_window_s]
        return len(recent) >= self.settings.max_deaths

    async def revive(self, room: str, dead_identity: str, cause: str) -> None:
        """A room's process died abnormally: remove its ghost participant and dispatch the room again."""
        if not self.record_death(room, cause):
            await self.tell(room, "given_up", dead_identity, cause)
            return
        # The agent that died proves our dispatch or claim of the room is over (a claim another worker took since
        # stays, and then that worker serves the room).
        await self.release(room)
        if dead_identity:
            with suppress(api.TwirpError):  # already gone
                await self.lkapi.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=dead_identity))
        await self.tell(room, "redispatching", dead_identity, cause)
        if await self.dispatch(room, dead=dead_identity):
            self.counters.redispatches[cause] += 1

    async def tell(self, room: str, state: str, dead: str, cause: str) -> None:
        """Tell the room's participants (on STATE_TOPIC) that its agent ``dead`` died of ``cause`` and what comes:
        "redispatching" or "given_up". Best effort: the room may be gone."""
        message = json.dumps({"state": state, "agent": dead, "cause": cause}).encode()
        with suppress(api.TwirpError):
            await self.lkapi.room.send_data(
                api.SendDataRequest(room=room, data=message, kind=models.DataPacket.Kind.RELIABLE, topic=STATE_TOPIC)
            )

    async def dispatch(self, room: str, *, dead: str = "") -> bool:
        """Dispatch an agent to ``room`` unless one is there or on its way. True when dispatched.

        The lock stays held for dispatch_grace_s after a dispatch, so no worker dispatches the room again before
        its agent has had time to join; ``dead`` is an agent identity known to be gone even if LiveKit lists it.
        """
        if not await self.redis.set(self._lock(room), self.token, nx=True, px=self._grace_ms):
            return False  # another worker is dispatching or serving this room
        busy = await self._agent_or_pending(room, dead)
        if busy:
            await self.release(room)
            log.info("room %s not dispatched: %s", room, busy)
            return False
        await self.lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=self.settings.agent_name, room=room)
        )
        log.info("room %s dispatched again", room)
        return True

    async def claim(self, room: str) -> None:
        """This worker accepted a job for ``room``: until its process has joined (a busy pool can take many
        seconds) the room has no agent yet but is no orphan. The claim replaces whoever dispatched the room."""
        await self.redis.set(self._lock(room), self.token, px=self._grace_ms)

    async def renew(self, rooms: set[str]) -> None:
        """Renew this worker's claims of the rooms it serves or is starting; a claim it lost is not taken back."""
        if not rooms:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                await self._owned(keys=[self._lock(room)], args=[self.token, "renew", self._grace_ms], client=pipe)
            await pipe.execute()

    async def release(self, room: str) -> None:
        """Release this worker's lock of ``room``, if it still is this worker's."""
        await self._owned(keys=[self._lock(room)], args=[self.token, "release", 0])

    @property
    def _grace_ms(self) -> int:
        return round(self.settings.dispatch_grace_s * 1000)

    def _heartbeat_key(self, token: str) -> str:
        return f"{self.key_prefix}worker:{token}"

    async def heartbeat(self) -> None:
        """This worker is alive: its claims are to be respected (see the module's docstring)."""
        await self.redis.set(self._heartbeat_key(self.token), "1", px=round(HEARTBEAT_TTL_S * 1000))

    async def _dead_holder(self, room: str) -> str | None:
        """The token of the dead worker whose claim covers ``room``, or None: no claim (an agent of no worker of
        ours: left alone), or one whose holder is alive or keeps no heartbeat (an older worker)."""
        holder = await self.redis.get(self._lock(room))
        token = holder.decode() if isinstance(holder, bytes) else (holder or "")
        if not token.endswith(HEARTBEAT_MARK) or await self.redis.exists(self._heartbeat_key(token)):
            return None
        return token

    def _lock(self, room: str) -> str:
        """Held by whoever dispatches the room, then by the worker that serves it; shared by all workers."""
        return f"{self.key_prefix}dispatch:{digest(room)}"

    async def _agent_or_pending(self, room: str, dead: str) -> str | None:
        """Why the room needs no dispatch (an agent in it, or one on its way), or None."""
        participants = await self.lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        for p in participants.participants:
            if p.kind == AGENT_KIND and p.identity != dead:
                return f"agent {p.identity} is in the room"
        # A dispatch made by any worker sharing this Redis holds the lock above; one made otherwise (the room's
        # own, or through the API) shows as a pending job. (livekit-server 1.9 lists no jobs for a room's
        # automatic dispatch, so "no job yet" proves nothing.)
        for dispatch in await self.lkapi.agent_dispatch.list_dispatch(room_name=room):
            if any(j.state.status == agent_proto.JobStatus.JS_PENDING for j in dispatch.state.jobs):
                return f"dispatch {dispatch.id} has a pending job"
        return None

    async def _take_over(self, room: str, dead: str, ghosts: list[str]) -> bool:
        """A room whose agents belong to a dead worker: take its lock (one reconciler only), remove the ghosts,
        dispatch an agent. True when this worker dispatched it."""
        if not await self._takeover(keys=[self._lock(room)], args=[dead, self.token, self._grace_ms]):
            return False
        for identity in ghosts:
            with suppress(api.TwirpError):  # gone meanwhile
                await self.lkapi.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=identity))
            await self.tell(room, "redispatching", identity, "worker_dead")
        await self.lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=self.settings.agent_name, room=room)
        )
        log.warning("room %s: its agents' worker is dead (no heartbeat); dispatched again", room)
        return True

    async def reconcile(self, serving: frozenset[str] | set[str] = frozenset()) -> None:
        """Dispatch every room that has had humans and no agent for orphan_after_s. ``serving``: rooms this worker
        already has a process for, whose agent may still be joining on a loaded box (LiveKit 1.9 shows no job
        for a room's automatic dispatch, so only the worker knows)."""
        now = time.monotonic()
        rooms = await self.lkapi.room.list_rooms(api.ListRoomsRequest())
        seen: set[str] = set()
        for room in rooms.rooms:
            participants = await self.lkapi.room.list_participants(api.ListParticipantsRequest(room=room.name))
            agents = [p.identity for p in participants.participants if p.kind == AGENT_KIND]
            if not participants.participants or room.name in serving:
                continue
            dead = await self._dead_holder(room.name) if agents else ""
            if dead is None:
                continue  # its agents' worker is alive, or they are no worker's of ours
            seen.add(room.name)
            since = self._orphan_since.setdefault(room.name, now)
            if now - since < self.settings.orphan_after_s or self.given_up(room.name):
                continue
            try:
                if await (self._take_over(room.name, dead, agents) if agents else self.dispatch(room.name)):
                    self.counters.reconciled += 1
                    self._orphan_since.pop(room.name, None)
            except api.TwirpError as exc:
                log.warning("room %s: dispatch failed: %s", room.name, brief(exc))
        for gone in set(self._orphan_since) - seen:
            del self._orphan_since[gone]
        self.counters.reconcile_rounds += 1
