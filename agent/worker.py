"""The worker: livekit-agents' AgentServer run embedded, one process per room, plus what it lacks.

Run with ``python -m agent.worker``. SIGTERM/SIGINT: stop taking rooms, let active rooms finish up to the drain
timeout, then close (exit 0). Exits non-zero when LiveKit stays unreachable, so the supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Literal, cast

from livekit import api
from livekit.agents import Agent, AgentServer, JobProcess, JobRequest
from livekit.agents.ipc.job_proc_executor import ProcJobExecutor
from redis.exceptions import RedisError

from agent.limits import die_with_parent
from agent.logs import brief, setup_logging
from agent.models import load_vad
from agent.redispatch import HEARTBEAT_EVERY_S, Redispatcher
from agent.session import conversation_id_from, entrypoint
from agent.settings import AgentSettings, load_or_exit, load_settings
from agent.status import StatusServer
from agent.store.keys import Keys
from agent.store.redis_tier import RedisTier, make_client

log = logging.getLogger("agent.worker")
SIGUSR1_EXIT = -signal.SIGUSR1  # livekit's memory kill
SIGKILL_EXIT = -signal.SIGKILL


def resolve_factory(spec: str) -> Callable[[], Agent]:
    """``package.module:factory`` to the callable; the module is preloaded in the forkserver."""
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    if not callable(factory):
        raise TypeError(f"worker.agent: {spec} is not callable")
    return factory  # type: ignore[no-any-return]


def use_operator_agent(settings: AgentSettings) -> None:
    """The operator's agent's packages (after the venv's on sys.path: the appliance's packages always win) and its
    environment ([agent.env]), before the forkserver starts: every room process inherits both, and the worker's
    processes are the only ones given them."""
    if settings.worker.agent_path is not None:
        sys.path.append(str(settings.worker.agent_path.resolve()))
    os.environ.update(settings.agent.environ())


def prewarm(proc: JobProcess) -> None:
    """Runs once in each room process before it gets a room: settings and the operator's agent factory."""
    die_with_parent()
    settings = load_settings(AgentSettings)
    proc.userdata["settings"] = settings
    proc.userdata["factory"] = resolve_factory(settings.worker.agent)
    proc.userdata["vad"] = load_vad(settings.models)


def register_plugins(settings: AgentSettings) -> None:
    """Import the plugins the models need before the server starts: livekit then preloads them in the
    forkserver, so room processes share them instead of importing them each."""
    if settings.models.vad == "silero":
        importlib.import_module("livekit.plugins.silero")
    if "openai" in (settings.models.llm, settings.models.tts, settings.models.stt):
        importlib.import_module("livekit.plugins.openai")


def build_server(
    settings: AgentSettings,
    *,
    preload: bool = True,
    multiprocessing_context: Literal["forkserver", "spawn"] = "forkserver",
    on_request: Callable[[JobRequest], Awaitable[None]] | None = None,
) -> AgentServer:
    """Our AgentServer; ``preload=False`` and ``spawn`` exist for the benchmark's baselines (bench/worker.py)."""
    worker = settings.worker
    livekit = settings.livekit

    def load(server: AgentServer) -> float:
        # Rooms against our cap, not host CPU: Redis and PostgreSQL on the same box would distort that.
        return len(server.active_jobs) / worker.max_rooms

    server = AgentServer(
        ws_url=livekit.url,
        api_key=livekit.api_key.get_secret_value() if livekit.api_key else "",
        api_secret=livekit.api_secret.get_secret_value() if livekit.api_secret else "",
        host=worker.health_bind,  # livekit's default is every interface
        port=worker.health_port,
        prometheus_port=worker.prometheus_port or None,
        job_memory_warn_mb=worker.job_memory_warn_mb,
        job_memory_limit_mb=worker.job_memory_limit_mb if worker.memory_monitor else 0,
        num_idle_processes=worker.num_idle_processes,
        drain_timeout=worker.drain_timeout_s,
        max_retry=worker.connect_retries,
        load_fnc=load,
        load_threshold=1.0,  # full at max_rooms
        setup_fnc=prewarm,
        multiprocessing_context=multiprocessing_context,
        # Our modules are imported once in the forkserver; room processes fork with them loaded.
        # agent.forkguard first: the forkserver dies with the worker.
        preload_modules=["agent.forkguard", "agent.session", worker.agent.partition(":")[0]] if preload else None,
    )
    server.rtc_session(entrypoint, agent_name=worker.agent_name, on_request=on_request)
    return server


def exit_cause(proc: ProcJobExecutor) -> str | None:
    """Why a room process ended, when that was abnormal: None for a clean exit."""
    code = proc.exitcode
    if code == SIGUSR1_EXIT:
        return "memory"
    if code == SIGKILL_EXIT:
        return "killed"
    if code not in (0, None):
        return "exit"
    return None


class Worker:
    """The AgentServer and what we add to it: re-dispatch, the reconciler, the status endpoint."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        preload: bool = True,
        multiprocessing_context: Literal["forkserver", "spawn"] = "forkserver",
    ) -> None:
        self.settings = settings
        register_plugins(settings)
        self.server = build_server(
            settings, preload=preload, multiprocessing_context=multiprocessing_context, on_request=self._accept
        )
        self.redis = make_client(settings.redis)
        livekit = settings.livekit
        self.lkapi = api.LiveKitAPI(
            livekit.url,
            livekit.api_key.get_secret_value() if livekit.api_key else None,
            livekit.api_secret.get_secret_value() if livekit.api_secret else None,
        )
        self.redispatcher = Redispatcher(self.lkapi, self.redis, settings.worker, settings.store.key_prefix)
        self.status = StatusServer(self, settings.worker.status_port, settings.livekit)
        self.server.on("worker_started", self._on_started)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting: Counter[str] = Counter()  # rooms accepted whose process has not got the job yet

    async def _accept(self, request: JobRequest) -> None:
        """Claim the room, then accept: livekit's accept returns once a process of the pool runs the job, which
        a busy pool can make take long; the claim is renewed all along (see claimed_rooms)."""
        room = request.room.name
        self._starting[room] += 1
        try:
            try:
                await self.redispatcher.claim(room)
            except RedisError as exc:  # the reconcilers may then dispatch the room again after dispatch_grace_s
                log.warning("room %s: could not claim it: %s", room, brief(exc))
            await request.accept()
        finally:
            self._starting[room] -= 1
            if self._starting[room] <= 0:
                del self._starting[room]

    def claimed_rooms(self) -> set[str]:
        """The rooms whose claim this worker renews: those it serves and those it is starting."""
        return {room for room, *_ in self.room_processes()} | set(self._starting)

    def _on_started(self) -> None:
        # The process pool is private in livekit-agents 1.8.9 (pinned); it is the only place that says which
        # room's process died and how.
        self.server._proc_pool.on("process_closed", self._on_process_closed)
        self.server._proc_pool.on("process_job_launched", self._on_job_launched)

    def _on_job_launched(self, proc: ProcJobExecutor) -> None:
        self.redispatcher.counters.started += 1

    def _on_process_closed(self, proc: ProcJobExecutor) -> None:
        job = proc.running_job
        if job is None:
            return
        room = job.job.room.name
        cause = exit_cause(proc)
        if cause is None or self.server.draining:
            # Over, or cut by the drain timeout: the room is free for whichever worker it needs next.
            self._spawn(self._release(room))
            return
        log.warning("room %s: its process %s died (%s, exit %s)", room, proc.pid, cause, proc.exitcode)
        self._spawn(self.redispatcher.revive(room, job.accept_arguments.identity, cause))

    async def _release(self, room: str) -> None:
        try:
            await self.redispatcher.release(room)
        except RedisError as exc:  # the claim lapses by itself within dispatch_grace_s
            log.warning("room %s: could not release its claim: %s", room, brief(exc))

    async def _heartbeat_forever(self) -> None:
        """Alive, for the other workers' reconcilers (agent/redispatch.py): until this process ends."""
        while True:
            try:
                await self.redispatcher.heartbeat()
            except RedisError as exc:
                log.warning("could not renew this worker's heartbeat: %s", brief(exc))
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    async def _renew_claims_forever(self) -> None:
        """A third of the claims' lifetime apart, so one late renewal never lets a served room's claim lapse."""
        while True:
            await asyncio.sleep(self.settings.worker.dispatch_grace_s / 3)
            try:
                await self.redispatcher.renew(self.claimed_rooms())
            except RedisError as exc:
                log.warning("could not renew the claims of this worker's rooms: %s", brief(exc))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def room_processes(self) -> list[tuple[str, str, int | None, str]]:
        """(room, job id, pid, room metadata) of every room this worker serves."""
        processes = cast(list[ProcJobExecutor], self.server._proc_pool.processes)  # forkserver: processes
        return [
            (p.running_job.job.room.name, p.running_job.job.id, p.pid, p.running_job.job.room.metadata)
            for p in processes
            if p.running_job
        ]

    async def conversation_of(self, room: str, metadata: str) -> str | None:
        """The conversation a room's process serves: named in the room's metadata, else the room's current one
        (the room process records it in Redis when it opens it)."""
        named = conversation_id_from(metadata)
        if named:
            return named
        try:
            mapped = await RedisTier.room_mapping_of(self.redis, Keys(self.settings.store.key_prefix), room)
        except RedisError:
            return None
        return mapped[0] if mapped else None

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.worker.reconcile_every_s)
            if self.server.draining:
                return
            if not self.server.id.startswith("AW_"):
                continue  # not registered yet: LiveKit would drop a job dispatched now (no worker to take it)
            try:
                await self.redispatcher.reconcile(serving=self.claimed_rooms())
            except Exception as exc:  # LiveKit or Redis unreachable: try again next round
                log.warning("reconcile failed: %s", brief(exc))

    async def run(self, stop: asyncio.Event) -> int:
        await self.status.start()
        served = asyncio.create_task(self.server.run(), name="agent server")
        reconciler = asyncio.create_task(self._reconcile_forever(), name="reconciler")
        renewer = asyncio.create_task(self._renew_claims_forever(), name="claims")
        heart = asyncio.create_task(self._heartbeat_forever(), name="heartbeat")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            await asyncio.wait({served, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if served.done():
                exc = served.exception()
                log.error("worker stopped: %s", brief(exc) if exc else "agent server returned")
                await self.server.aclose()  # its idle room processes would otherwise keep us from exiting
                return 1
            log.info("draining: no new rooms; active rooms have %ss", self.settings.worker.drain_timeout_s)
            try:
                await self.server.drain()
            except TimeoutError:
                log.warning("drain timeout: closing the rooms still active (their conversations are resumed)")
            await self.server.aclose()
            return 0
        finally:
            reconciler.cancel()
            renewer.cancel()
            heart.cancel()
            stopping.cancel()
            await self.status.aclose()
            await self.lkapi.aclose()
            await self.redis.aclose()


async def serve(
    settings: AgentSettings,
    *,
    preload: bool = True,
    multiprocessing_context: Literal["forkserver", "spawn"] = "forkserver",
) -> int:
    """Run the worker until SIGTERM or SIGINT; the options are build_server's (bench/worker.py's baselines)."""
    use_operator_agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(settings, preload=preload, multiprocessing_context=multiprocessing_context)
    return await worker.run(stop)


def main() -> None:
    setup_logging()
    settings = load_or_exit(AgentSettings)
    setup_logging(settings.logging)  # now at the configured level and format
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
