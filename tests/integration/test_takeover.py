"""A dead worker's rooms on a real Redis, as the worker's own ACL user: while its heartbeat lives its claims are
respected; once it is gone its rooms' locks pass to exactly one other worker, however many race for them."""

from __future__ import annotations

import asyncio

from agent.redispatch import HEARTBEAT_TTL_S, Redispatcher
from agent.settings import AgentSettings
from agent.store.redis_tier import make_client


def redispatcher(settings: AgentSettings) -> Redispatcher:
    # LiveKit is not asked in what is tested here: the locks and heartbeats alone.
    return Redispatcher(None, make_client(settings.redis), settings.worker, settings.store.key_prefix)  # type: ignore[arg-type]


async def test_a_dead_workers_rooms_pass_to_one_other_worker(settings: AgentSettings) -> None:
    dying, *others = [redispatcher(settings) for _ in range(4)]
    await dying.heartbeat()
    await dying.claim("busy-room")
    assert await others[0]._dead_holder("busy-room") is None  # alive: its claim stands
    assert await others[0]._dead_holder("empty-room") is None  # an agent no worker of ours claimed: left alone

    # It dies: no more beats. Within HEARTBEAT_TTL_S its heartbeat is gone, its claim still there.
    deadline = asyncio.get_running_loop().time() + HEARTBEAT_TTL_S + 2
    while await alive(settings, dying.token):
        assert asyncio.get_running_loop().time() < deadline, "the heartbeat outlived its TTL"
        await asyncio.sleep(0.1)
    assert await others[0]._dead_holder("busy-room") == dying.token
    lock = dying._lock("busy-room")
    won = await asyncio.gather(*(o._takeover(keys=[lock], args=[dying.token, o.token, o._grace_ms]) for o in others))
    assert sorted(won) == [0, 0, 1]  # one reconciler only
    winner = others[won.index(1)]
    assert await winner.redis.get(lock) == winner.token.encode()
    await winner.heartbeat()
    assert all([await o._dead_holder("busy-room") is None for o in others])
    # An older worker's claim (no heartbeat kept, as during an upgrade's graceful restart) is never taken over.
    await winner.redis.set(dying._lock("old-room"), "host:123:abcd")
    assert await others[0]._dead_holder("old-room") is None
    for r in (dying, *others):
        await r.redis.aclose()


async def alive(settings: AgentSettings, token: str) -> bool:
    client = make_client(settings.redis)
    try:
        return bool(await client.exists(f"{settings.store.key_prefix}worker:{token}"))
    finally:
        await client.aclose()
