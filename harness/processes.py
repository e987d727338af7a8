"""Our own entry points run as real processes, configured through the environment as in production."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import redis
from pydantic import BaseModel, SecretStr

from agent.settings import AgentSettings
from agent.status_client import fetch_status
from agent.store.keys import Keys
from harness.servers import wait_until


def settings_env(settings: AgentSettings, config_dir: Path) -> dict[str, str]:
    """An environment that makes a child process load exactly ``settings`` (APPLIANCE_<SECTION>__<KEY>)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    empty = config_dir / "appliance.toml"
    empty.write_text("# settings come from the environment in tests\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_CONFIG"] = str(empty)
    for section, model in settings:
        assert isinstance(model, BaseModel)
        for key, value in model:
            text = _env_value(value)
            if text is not None:
                env[f"APPLIANCE_{section.upper()}__{key.upper()}"] = text
    return env


def _env_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):  # [agent.env]: pydantic-settings parses a table from JSON
        return json.dumps({k: _env_value(v) for k, v in value.items()})
    return str(value)


class EntryPoint:
    """One of our entry points (``python -m MODULE``) as a child process, configured like production."""

    module = ""

    def __init__(
        self,
        settings: AgentSettings,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        *,
        module: str | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.module = module or self.module
        self.args = args
        self.settings = settings
        self.env = settings_env(settings, workdir / "config") | (extra_env or {})
        self.log = workdir / f"{self.module.rpartition('.')[2]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                env=self.env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )

    def running(self) -> bool:
        """True while it runs; fails the test with its output if it exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.module} exited with {self.proc.returncode}: {self.output()[-3000:]}")
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, wait for the exit code, and check that it left no process behind."""
        assert self.proc is not None
        family = [psutil.Process(self.pid), *self.descendants()] if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        wait_until(
            lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family),
            15,
            f"{self.module} and its children gone",
        )
        return code

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class FlusherProcess(EntryPoint):
    module = "agent.flusher"

    def __init__(self, settings: AgentSettings, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        # The flusher's own ACL user where the test's room processes have the worker's, as the appliance runs.
        user = {"APPLIANCE_REDIS__ACL_USER": "flusher"} if settings.redis.acl_user else {}
        super().__init__(settings, workdir, user | (extra_env or {}))

    def start(self, *, ready: bool = True) -> FlusherProcess:
        """Start it and, with ``ready``, wait until it has published its first stats (signals handled)."""
        self.spawn()
        if ready:
            wait_until(self._published, 20, f"flusher {self.pid} ready")
        return self

    def _published(self) -> bool:
        r = self.settings.redis
        password = r.password.get_secret_value() if r.password else None
        with redis.Redis(unix_socket_path=str(r.unix_socket), password=password) as client:
            published: Any = client.hget(Keys(self.settings.store.key_prefix).flusher_stats, "pid")
        return self.running() and published == str(self.pid).encode()


class WorkerProcess(EntryPoint):
    """The worker; its forkserver and room processes are its descendants."""

    module = "agent.worker"

    def start(self, *, registered: bool = True) -> WorkerProcess:
        self.spawn()
        if registered:
            wait_until(self.registered, 60, f"worker {self.pid} registered with LiveKit")
        return self

    def status(self) -> dict[str, Any]:
        return fetch_status(self.settings.worker.status_port, self.settings.livekit, 5)

    def registered(self) -> bool:
        return self.running() and str(self.status()["worker_id"]).startswith("AW_")

    def rooms(self) -> set[str]:
        """The rooms this worker has a process for."""
        return {room["room"] for room in self.status()["rooms"]}
