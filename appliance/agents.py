"""The operator's agent: install a version into a directory of its own, check it, switch the worker to it.

Each version lives in ``<data_dir>/agents/<name>-<version>-<digest>/`` (``site/`` its packages, ``wheels/`` the
wheels they came from, ``agent.json`` what it is). The running agent is ``worker.agent`` and ``worker.agent_path``
in appliance.toml, switched together by one atomic write of that file and a graceful restart of the worker; the
one before it is named in ``agents/previous``, for rollback. Nothing is switched before the agent was imported
and built in a separate process, as the worker's user with the worker's settings; on any failure the running
agent, the config and the venv are as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomlkit

from agent.settings import FACTORY, WorkerSettings
from appliance import agent_packages as packages
from appliance import fingerprint, service
from appliance.errors import ApplianceError
from appliance.files import rewrite, write_atomic
from appliance.layout import Layout
from appliance.programs import WORKERS
from appliance.settings import ApplianceSettings
from appliance.supervisor import Supervisor

Progress = Callable[[str], None]
SAMPLE = WorkerSettings.model_fields["agent"].default
MANIFEST = "agent.json"
PREVIOUS = "previous"
CHECK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Installed:
    """An installed agent version, as its agent.json records it."""

    name: str
    version: str
    factory: str
    source: str
    installed_at: str
    packages: list[str]
    built_for: str  # the appliance it was resolved and checked against (fingerprint.appliance)
    directory: str

    @property
    def site(self) -> Path:
        return Path(self.directory) / "site"

    @classmethod
    def read(cls, directory: Path) -> Installed | None:
        try:
            data = json.loads((directory / MANIFEST).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return cls(**{**data, "directory": str(directory)})


@dataclass(frozen=True)
class Running:
    """What the worker runs: a factory, and the installed version it comes from (None: in the venv)."""

    factory: str
    installed: Installed | None

    def summary(self) -> str:
        if self.installed is None:
            return "sample (agent.sample:build)" if self.factory == SAMPLE else self.factory
        return f"{self.installed.name} {self.installed.version} ({self.factory})"

    def describe(self) -> dict[str, Any]:
        if self.installed is None:
            source = "the sample the appliance ships" if self.factory == SAMPLE else "the appliance's venv"
            return {"name": "sample" if self.factory == SAMPLE else self.factory, "factory": self.factory,
                    "source": source}  # fmt: skip
        return asdict(self.installed)


def agents_dir(layout: Layout) -> Path:
    return layout.data_dir / "agents"


def running(settings: ApplianceSettings) -> Running:
    path = settings.worker.agent_path
    return Running(settings.worker.agent, Installed.read(path.parent) if path else None)


def previous(layout: Layout) -> Running | None:
    try:
        data = json.loads((agents_dir(layout) / PREVIOUS).read_text())
    except (FileNotFoundError, ValueError):
        return None
    path = data.get("agent_path")
    return Running(data["agent"], Installed.read(Path(path).parent) if path else None)


def status(settings: ApplianceSettings, layout: Layout) -> dict[str, Any]:
    before = previous(layout)
    return {"agent": running(settings).describe(), "previous": before.describe() if before else None}


def install(
    settings: ApplianceSettings,
    layout: Layout,
    given: str,
    *,
    factory: str | None,
    index: tuple[str, ...],
    progress: Progress,
) -> Installed:
    """Install ``given`` (a project directory, a wheel, a requirements file) as the running agent."""
    source = packages.Source.of(given)
    if factory is not None:
        _check_spec(factory)
    with _locked(layout):
        installed = _build(settings, layout, source, factory=factory, index=index, progress=progress)
        _switch(settings, layout, installed.factory, installed.site, progress)
        _prune(settings, layout, keep=installed)
    return installed


def reinstall_for_upgrade(settings: ApplianceSettings, layout: Layout, progress: Progress) -> Installed | None:
    """Install the running agent again, from its kept wheels (offline), when the appliance it was resolved and
    checked against changed (an upgrade: new code, or new packages). The config is switched, the worker not
    restarted: the upgrade does that. Returns the new version's record, or None when nothing needed doing."""
    now = running(settings).installed
    if now is None or now.built_for == fingerprint.appliance():
        return None
    wheels = Path(now.directory) / "wheels"
    source = packages.Source(now.source, tuple(sorted(str(w) for w in wheels.glob("*.whl"))))
    with _locked(layout):
        installed = _build(settings, layout, source, factory=now.factory, index=("--no-index", "--find-links",
                           str(wheels)), progress=progress)  # fmt: skip
        _switch(settings, layout, installed.factory, installed.site, progress, restart=False)
    return installed


def rollback(settings: ApplianceSettings, layout: Layout, progress: Progress) -> Running:
    """Back to the agent before the running one (and the running one becomes the previous)."""
    with _locked(layout):
        before = previous(layout)
        if before is None:
            raise ApplianceError("no previous agent to roll back to (`appliance agent status`)")
        site = before.installed.site if before.installed else None
        if site is not None:
            _check(settings, layout, before.factory, site, progress)
        _switch(settings, layout, before.factory, site, progress)
    return before


def remove(settings: ApplianceSettings, layout: Layout, progress: Progress) -> None:
    """Back to the sample agent; the removed one stays as the previous, for a rollback."""
    if running(settings).factory == SAMPLE and settings.worker.agent_path is None:
        raise ApplianceError("the sample agent runs already: nothing to remove")
    with _locked(layout):
        _switch(settings, layout, SAMPLE, None, progress)


# --- building a version ---------------------------------------------------------------------------------------


def _build(
    settings: ApplianceSettings,
    layout: Layout,
    source: packages.Source,
    *,
    factory: str | None,
    index: tuple[str, ...],
    progress: Progress,
) -> Installed:
    root = agents_dir(layout)
    pins = fingerprint.venv_pins()
    work = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    try:
        work.chmod(0o755)  # the check runs as the service user
        progress(f"resolving {source.text} against the appliance's {len(pins)} packages")
        resolved, wanted = packages.resolve(source, index, pins, work)
        progress(f"fetching {len(wanted)} wheel(s): {', '.join(resolved.packages)}")
        packages.fetch(wanted, index, work / "wheels", source.text)
        packages.install_wheels(work / "wheels", work / "site", source.text)
        spec = factory or packages.factory_of(work / "site", resolved.name)
        if spec is None:
            raise ApplianceError(
                f"{source.text}: which factory? give --factory package.module:callable, or declare it in the project"
                f' ([project.entry-points."{packages.ENTRY_POINT_GROUP}"] agent = "package.module:callable")'
            )
        _check_spec(spec)
        _readable(work)
        _check(settings, layout, spec, work / "site", progress)
        # A name of its own, even for the same wheels again: the running worker may import from the one before.
        final = root / f"{resolved.name}-{resolved.version}-{secrets.token_hex(4)}"
        installed = Installed(
            name=resolved.name,
            version=resolved.version,
            factory=spec,
            source=source.text,
            installed_at=datetime.now(UTC).isoformat(timespec="seconds"),
            packages=resolved.packages,
            built_for=fingerprint.appliance(),
            directory=str(final),
        )
        record = {k: v for k, v in asdict(installed).items() if k != "directory"}
        write_atomic(work / MANIFEST, json.dumps(record, indent=2) + "\n", mode=0o644)
        work.rename(final)
        return installed
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check(settings: ApplianceSettings, layout: Layout, spec: str, site: Path, progress: Progress) -> None:
    """Import the factory and build the agent in a process of its own (agent/check.py), as the worker would."""
    progress(f"checking {spec}: imported and built in a separate process, as the worker's user")
    env = service.supervisord_env(layout) | {"APPLIANCE_WORKER__AGENT": spec, "APPLIANCE_WORKER__AGENT_PATH": str(site)}
    user = settings.control.user if os.geteuid() == 0 else None  # the worker's user, as the worker runs
    try:
        done = subprocess.run(
            [str(layout.bin("python")), "-m", "agent.check"],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    except subprocess.TimeoutExpired:
        raise ApplianceError(f"{spec}: building the agent took over {CHECK_TIMEOUT_S} s; nothing changed") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ApplianceError(f"{spec}: the check failed: {lines[-1] if lines else 'no output'}; nothing changed")


def _readable(tree: Path) -> None:
    """Everything readable by the worker's user (root's umask may be 077), nothing writable by it."""
    for path in [tree, *tree.rglob("*")]:
        mode = path.lstat().st_mode
        if not path.is_symlink():
            path.chmod((mode | 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0)) & ~0o022)


def _check_spec(spec: str) -> None:
    if not re.match(FACTORY, spec):
        raise ApplianceError(f"--factory {spec}: not package.module:callable")


# --- switching ------------------------------------------------------------------------------------------------


def _switch(
    settings: ApplianceSettings,
    layout: Layout,
    spec: str,
    site: Path | None,
    progress: Progress,
    *,
    restart: bool = True,
) -> None:
    """Point the worker at ``spec`` (from ``site``) with one atomic write of appliance.toml, then restart the
    worker gracefully; if it does not come up, the config and the worker are put back."""
    config = layout.config_file
    if not config.exists():
        raise ApplianceError(f"{config}: not found: install the appliance first (install.sh)")
    before = config.read_text()
    doc = tomlkit.parse(before)
    worker = doc.setdefault("worker", tomlkit.table())
    worker["agent"] = spec
    if site is None:
        worker.pop("agent_path", None)
    else:
        worker["agent_path"] = str(site)
    rewrite(config, tomlkit.dumps(doc))
    sup = Supervisor(layout.supervisor_socket)
    if restart and sup.answers():
        old = service.running_worker(sup)
        try:
            now = service.restart_worker(settings, layout, now=False, progress=progress)
        except ApplianceError:
            rewrite(config, before)
            for name in WORKERS:
                if name != old:
                    sup.stop(name, timeout_s=10)
            raise
        progress(f"{now} runs {spec}")
    elif restart:
        progress(f"supervisord is not running: the worker runs {spec} when the appliance starts")
    record = {"agent": settings.worker.agent, "agent_path": str(settings.worker.agent_path or "") or None}
    write_atomic(agents_dir(layout) / PREVIOUS, json.dumps(record) + "\n", mode=0o644)


def _prune(settings: ApplianceSettings, layout: Layout, *, keep: Installed) -> None:
    """Versions neither running nor previous go, and what a crashed install left."""
    before = previous(layout)
    kept = {Path(keep.directory).name}
    if before is not None and before.installed is not None:
        kept.add(Path(before.installed.directory).name)
    for entry in agents_dir(layout).iterdir():
        if entry.is_dir() and entry.name not in kept:
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One agent operation at a time."""
    root = agents_dir(layout)
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ApplianceError(f"another `appliance agent` command is running ({root / '.lock'})") from None
        yield
