"""What the rooms benchmark runs against: a private network namespace holding a private livekit-server, Redis and
PostgreSQL, and for each configuration a worker and a flusher (with metrics on, the exporter too, and both record
their figures as the appliance's do); every process it starts is accounted for.

Everything lives in one network namespace whose only addresses are loopback (see harness/livekit.py for why
WebRTC clients need it), so no packet can leave the machine. Making one takes root.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from livekit.rtc._ffi_client import FfiClient

from agent.settings import AgentSettings, FlusherSettings, LiveKitSettings, StoreSettings, WorkerSettings
from agent.status_client import fetch_status
from agent.store.migrate import migrate
from appliance.layout import Layout
from appliance.settings import ApplianceSettings, ControlSettings, MetricsSettings
from bench.environment import BenchError
from bench.rooms_agent import TIMELINE_ENV
from harness.livekit import LiveKitServer, PrivateNetwork
from harness.processes import EntryPoint, FlusherProcess, WorkerProcess
from harness.servers import PostgresServer, RedisServer, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]  # the worker imports bench.rooms_agent from here
PR_SET_CHILD_SUBREAPER = 36
DATABASE = "bench"
# Each room's store holds at least one PostgreSQL connection: 100 rooms, re-dispatches and spare processes
# need more than the test harness's 200.
MAX_CONNECTIONS = 400


class RoomsPostgres(PostgresServer):
    """The test harness's PostgreSQL with room for every room's connection (it allows 200)."""

    def _run(self, *args: str) -> None:
        super()._run(*(a.replace("max_connections=200", f"max_connections={MAX_CONNECTIONS}") for a in args))


@dataclass
class Stack:
    """The servers of one benchmark run and every process started for it, to prove at the end that none is left."""

    workdir: Path
    tag: str
    livekit: LiveKitServer
    redis: RedisServer
    pg: PostgresServer
    seen: dict[tuple[int, float], str] = field(default_factory=dict)  # (pid, create time) -> what it was

    def base_settings(self, name: str) -> AgentSettings:
        """Settings of one configuration's run: its own key prefix and flusher consumer, the shared servers."""
        return AgentSettings(
            redis=self.redis.settings(),
            postgres=self.pg.settings(DATABASE),
            store=StoreSettings(key_prefix=f"bench{self.tag}{name}:", spool_dir=self.workdir / "spool" / name),
            flusher=FlusherSettings(consumer=f"bench-{self.tag}-{name}"),
            livekit=LiveKitSettings(
                url=self.livekit.url, api_key=self.livekit.api_key, api_secret=self.livekit.api_secret
            ),
        )

    def remember(self, pid: int | None, what: str) -> None:
        if pid is None:
            return
        with contextlib.suppress(psutil.Error):
            self.seen[(pid, psutil.Process(pid).create_time())] = what

    def remember_tree(self, root: int, what: str) -> None:
        self.remember(root, what)
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(root).children(recursive=True):
                self.remember(child.pid, f"{what}'s child")

    def servers(self) -> dict[str, int]:
        """Pids of the servers, for CPU and memory figures."""
        return {
            "livekit": self.livekit.pid or 0,
            "redis": self.redis.proc.pid if self.redis.proc else 0,
            "postgres": self.pg.postmaster_pid() or 0,
        }


def require_root() -> None:
    if os.geteuid() != 0:
        raise BenchError(
            "bench.rooms must run as root: it creates a private network namespace (unshare CLONE_NEWNET) so "
            "that every WebRTC packet stays on loopback, and runs PostgreSQL as the postgres user"
        )


def become_subreaper() -> None:
    """Orphaned descendants (PostgreSQL's postmaster, a dead worker's children) become our children: none can
    outlive the run unseen."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def enter_private_network(stack: contextlib.ExitStack) -> PrivateNetwork:
    if FfiClient._instance is not None:  # its threads would stay outside the namespace
        raise BenchError("the livekit rtc runtime started before the private network: start it afterwards")
    try:
        network = PrivateNetwork().enter()
    except PermissionError as exc:
        raise BenchError(f"WebRTC over loopback needs a private network namespace: {exc}") from None
    stack.callback(network.leave)
    addresses = PrivateNetwork.addresses()
    if not all(a.startswith("127.") or a == "::1" for a in addresses):
        raise BenchError(f"the private network has a non-loopback address: {addresses}")
    return network


def start_stack(stack: contextlib.ExitStack, workdir: Path, tag: str) -> Stack:
    """livekit-server, Redis and PostgreSQL (migrated), each closed when ``stack`` closes."""
    livekit = LiveKitServer()
    stack.callback(livekit.close)
    livekit.start()
    redis_server = RedisServer()
    stack.callback(redis_server.close)
    redis_server.start()
    pg = RoomsPostgres()
    stack.callback(pg.close)
    pg.start()
    with pg.connect() as conn:
        row = conn.execute("SHOW max_connections").fetchone()
    if row is None or int(str(row[0])) < MAX_CONNECTIONS:
        raise BenchError(f"PostgreSQL runs with max_connections {row[0] if row else '?'}, {MAX_CONNECTIONS} needed")
    pg.create_database(DATABASE)
    with pg.connect(DATABASE) as conn:
        migrate(conn)
    found = Stack(workdir, tag, livekit, redis_server, pg)
    for name, pid in found.servers().items():
        found.remember_tree(pid, name)
    return found


@dataclass
class Deployment:
    """One configuration's worker and flusher."""

    worker: WorkerProcess
    flusher: FlusherProcess
    started: float
    timeline: Path  # bench/rooms_agent.py's lines
    exporter: EntryPoint | None = None  # appliance.metrics, with metrics on

    def scrape(self) -> int:
        """One scrape of the exporter, as Prometheus makes it; the bytes it answered."""
        settings = self.exporter.settings if self.exporter else None
        assert isinstance(settings, ApplianceSettings)
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics.port}/metrics", timeout=30) as answer:
            return len(answer.read())


def deploy(
    stack: Stack, name: str, *, rooms: int, idle: int, baseline: str, spare: int, metrics: bool = False
) -> Deployment:
    """Start the flusher and a worker for ``rooms`` rooms; returns once its idle processes are warm. With
    ``metrics``, as the appliance runs them with [metrics] on: each records its figures in its own directory, and
    the exporter (appliance.metrics) serves them with the status report."""
    settings = stack.base_settings(name).model_copy(
        update={
            "worker": WorkerSettings(
                health_port=free_port(),
                status_port=free_port(),
                max_rooms=rooms + spare,  # killed rooms' processes wind down while their rooms are re-dispatched
                num_idle_processes=idle,
                departure_timeout_s=2,  # rooms end soon after the clients leave: a quick clean-up
                drain_timeout_s=30,
                agent="bench.rooms_agent:build",  # the sample agent, and a line on each room's dispatch
            )
        }
    )
    workdir = stack.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    exporter, figures = _exporter(settings, workdir) if metrics else (None, {})
    flusher = FlusherProcess(settings, workdir, figures.get("flusher")).start()
    stack.remember(flusher.pid, f"{name} flusher")
    worker = WorkerProcess(settings, workdir, figures.get("worker"), module="bench.worker", args=(baseline or "ours",))
    timeline = workdir / "timeline.jsonl"
    worker.env[TIMELINE_ENV] = str(timeline)
    worker.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), worker.env.get("PYTHONPATH")]))
    deployment = Deployment(worker, flusher, started, timeline, exporter)
    try:
        worker.start()
        stack.remember_tree(worker.pid, f"{name} worker")
        wait_until(lambda: warm(worker, idle), 120, f"{idle} idle room processes of the {name} worker")
        if exporter is not None:
            exporter.spawn()
            stack.remember(exporter.pid, f"{name} exporter")
            wait_until(lambda: exporter.running() and deployment.scrape(), 60, f"the {name} exporter answering")
    except BaseException:
        undeploy(stack, deployment)
        raise
    stack.remember_tree(worker.pid, f"{name} worker")
    return deployment


def _exporter(settings: AgentSettings, workdir: Path) -> tuple[EntryPoint, dict[str, dict[str, str]]]:
    """The exporter of this configuration, and the environment of each program that records its figures."""
    sections = {name: getattr(settings, name) for name in type(settings).model_fields}
    full = ApplianceSettings(
        **sections,
        control=ControlSettings(data_dir=workdir / "data", log_dir=workdir / "log", run_dir=workdir / "run"),
        metrics=MetricsSettings(port=free_port(), health_port=free_port()),
    )
    layout = Layout.of(full, workdir / "config" / "appliance.toml")
    figures = {p: {"PROMETHEUS_MULTIPROC_DIR": str(layout.figures_dir(p))} for p in ("worker", "flusher")}
    return EntryPoint(full, workdir, module="appliance.metrics"), figures


def status(worker: WorkerProcess, timeout: float = 60) -> dict[str, Any]:
    """The worker's /status; patient, as it measures every room's memory (slow with many large processes)."""
    return fetch_status(worker.settings.worker.status_port, worker.settings.livekit, timeout)


def warm(worker: WorkerProcess, idle: int) -> bool:
    """The worker's pool has initialised ``idle`` processes (livekit logs each one)."""
    return worker.output().count("process initialized") >= idle


def undeploy(stack: Stack, deployment: Deployment) -> None:
    """SIGTERM the worker (it drains: rooms end once their participants left) and the flusher; kill what stays."""
    worker, flusher = deployment.worker, deployment.flusher
    if worker.proc is not None:
        stack.remember_tree(worker.pid, "worker")
        family = worker.descendants()
        try:
            worker.terminate(60)
        except Exception:
            worker.kill()
        for proc in family:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    for helper in (flusher, deployment.exporter):
        if helper is not None and helper.proc is not None:
            try:
                helper.terminate(30)
            except Exception:
                helper.kill()


def reap() -> None:
    """Collect every exited child (as subreaper, orphans' too)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def leftovers(stack: Stack, timeout: float = 15) -> list[str]:
    """Processes this run started that are still alive (zombies reaped first); empty when the clean-up worked."""
    deadline = time.monotonic() + timeout
    while True:
        reap()
        alive = [f"{what} (pid {pid})" for (pid, created), what in stack.seen.items() if alive_as(pid, created)]
        alive += [
            f"{p.name()} (pid {p.pid}, a child of this process)"
            for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE
        ]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def alive_as(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_leftovers(stack: Stack) -> None:
    """Last resort after a failed run: SIGKILL what is left of ours, by pid."""
    for (pid, created), _ in stack.seen.items():
        if alive_as(pid, created):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
