"""``appliance doctor``: preflight and runtime checks, each failure with the fix.

Checks run in order and never raise: a check that cannot run is a failed check saying why. Preflight checks
(settings, secrets, user, binaries, ports, disk) hold before the appliance runs; runtime checks (supervisord,
programs, stores, LiveKit, worker registration) need it running.
"""

from __future__ import annotations

import pwd
import re
import shutil
import stat
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from appliance import probes, programs
from appliance import status as status_mod
from appliance.masking import mask, secret_values
from appliance.programs import WORKERS

if TYPE_CHECKING:
    from appliance.layout import Layout
    from appliance.settings import ApplianceSettings

MIN_REDIS = (7, 0)  # install.sh's MIN_REDIS: functions, XAUTOCLAIM's deleted-entry reply, ACL-era AUTH
# Below this much free space PostgreSQL and Redis's AOF are about to fail writes (install.sh refuses < 3 GiB).
MIN_FREE_DISK = 1 << 30
MIN_FREE_DISK_RATIO = 0.05
TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.name}: {self.detail}"
        return f"FAIL  {self.name}: {self.detail}" + (f" -> fix: {self.fix}" if self.fix else "")


def passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, False, detail, fix)


def config_checks(
    config_file: Path, load: Callable[[], ApplianceSettings]
) -> tuple[list[Check], ApplianceSettings | None]:
    """The settings load; without them nothing else can be checked."""
    from agent.settings import SettingsError

    if not config_file.exists():
        fix = "install the appliance (./install.sh or `appliance install`), or set APPLIANCE_CONFIG"
        return [failed("config", f"{config_file} not found", fix)], None
    try:
        settings = load()
    except SettingsError as exc:
        return [failed("config", line, _settings_fix(line, config_file)) for line in exc.errors], None
    return [passed("config", f"{config_file} is valid")], settings


def _settings_fix(error: str, config_file: Path) -> str:
    path = error.split(": ", 1)[0]
    if "must be mode 0600" in error:
        return f"chmod 0600 {path}"
    if "permission denied" in error:
        return "run as root or as the service user"
    if "secrets are not allowed" in error:
        return "move it as the message says"
    return f"correct it in {config_file}, its secrets file or the APPLIANCE_* environment"


def run_checks(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    """Every check after the settings, in order."""
    steps: list[Callable[[ApplianceSettings, Layout], Iterator[Check]]] = [
        check_user,
        check_secrets,
        check_binaries,
        check_ports,
        check_disk,
        check_supervisord,
        check_stores,
        check_livekit,
        check_workers,
    ]
    for step in steps:
        try:
            yield from step(settings, layout)
        except Exception as exc:  # a check that breaks is reported, and the others still run
            yield failed(step.__name__.removeprefix("check_"), f"could not check: {type(exc).__name__}: {exc}", "")


# --- preflight --------------------------------------------------------------------------------------------------


def check_user(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    user = settings.control.user
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        yield failed("user", f"the service user {user!r} does not exist", "run `appliance install` (it creates it)")
        return
    yield passed("user", f"{user} (uid {entry.pw_uid})")


def check_secrets(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    path, user = layout.secrets_file, settings.control.user
    try:
        info = path.stat()
    except FileNotFoundError:
        yield failed("secrets", f"{path} not found", "run `appliance install` (it generates the secrets once)")
        return
    except PermissionError:
        yield failed("secrets", f"permission denied on {path}", f"run as root or as {user}")
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o600:
        yield failed("secrets", f"{path} is mode {mode:04o}", f"chmod 0600 {path}")
        return
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    if owner != user:
        yield failed("secrets", f"{path} is owned by {owner}", f"chown {user}: {path}")
        return
    yield passed("secrets", f"{path} mode 0600, owner {user}")


def version_of(command: list[str], pattern: str) -> tuple[int, ...] | None:
    """The version a binary prints, as numbers, or None when it does not run or says something else."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(pattern, out)
    return tuple(int(part) for part in found.group(1).split(".")) if found else None


def livekit_server_version(binary: Path) -> tuple[int, ...] | None:
    """What ``livekit-server --version`` says, or None when ``binary`` is not one."""
    return version_of([str(binary), "--version"], r"^livekit-server version (\d+(?:\.\d+)*)")


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def check_binaries(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    from appliance.render import postgres_bindir, redis_server

    if settings.runs_stores:
        binary = redis_server()
        redis_version = version_of([binary, "--version"], r"v=(\d+\.\d+(?:\.\d+)?)")
        if redis_version is None:
            yield failed("redis-server", f"{binary} does not run", "apt-get install redis-server")
        elif redis_version < MIN_REDIS:
            yield failed(
                "redis-server",
                f"{binary} is {dotted(redis_version)}, older than {dotted(MIN_REDIS)}",
                "install Redis >= 7.0 (Debian 12 or Ubuntu 24.04 ship it)",
            )
        else:
            yield passed("redis-server", f"{binary} {dotted(redis_version)}")
        try:
            postgres = postgres_bindir() / "postgres"
        except FileNotFoundError as exc:
            yield failed("postgres binary", str(exc), "apt-get install postgresql")
        else:
            pg_version = version_of([str(postgres), "--version"], r"\(PostgreSQL\) (\d+(?:\.\d+)?)")
            if pg_version is None:
                yield failed("postgres binary", f"{postgres} does not run", "apt-get install --reinstall postgresql")
            else:
                yield passed("postgres binary", f"{postgres} {dotted(pg_version)}")
    if settings.bundles_livekit:
        binary_path = settings.livekit_server.bin
        lk_version = livekit_server_version(binary_path)
        if lk_version is None:
            yield failed(
                "livekit-server",
                f"{binary_path} is missing or not a livekit-server",
                "re-run install.sh (with --livekit-server-bin PATH), or set livekit.url to an external LiveKit"
                " and livekit_server.enabled = false",
            )
        else:
            yield passed("livekit-server", f"{binary_path} {dotted(lk_version)}")


def holders(port: int, kind: str) -> list[int | None]:
    """The pids listening on ``port`` (None for a process we may not see), from the kernel's socket tables."""
    found: list[int | None] = []
    for conn in psutil.net_connections(kind=kind):
        if conn.laddr and conn.laddr.port == port and (kind == "udp" or conn.status == psutil.CONN_LISTEN):
            found.append(conn.pid)
    return found


def supervisord_pid(layout: Layout) -> int | None:
    try:
        return int(layout.supervisord_pid.read_text().strip())
    except (OSError, ValueError):
        return None


def is_ours(pid: int, root: int | None) -> bool:
    """Whether ``pid`` is our supervisord or runs under it."""
    if root is None:
        return False
    try:
        proc = psutil.Process(pid)
        return pid == root or any(parent.pid == root for parent in proc.parents())
    except psutil.Error:
        return False


def check_ports(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    root = supervisord_pid(layout)
    busy: list[Check] = []
    for setting, port, kind in programs.ports(settings):
        pids = holders(port, kind)
        strangers = [pid for pid in pids if pid is None or not is_ours(pid, root)]
        if not strangers:
            continue
        pid = strangers[0]
        who = "a process of another user" if pid is None else f"pid {pid} ({_name(pid)})"
        busy.append(
            failed(
                "ports",
                f"{kind} port {port} ({setting}) is in use by {who}",
                f"stop that process, or set {setting} to a free port in {layout.config_file}",
            )
        )
    if busy:
        yield from busy
        return
    ports = ", ".join(str(port) for _, port, _ in programs.ports(settings))
    yield passed("ports", f"{ports}: free or ours")


def _name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def check_disk(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    path = layout.data_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    free_gib = usage.free / 2**30
    detail = f"{free_gib:.1f} GiB free of {usage.total / 2**30:.1f} GiB on {path}"
    if usage.free < MIN_FREE_DISK or usage.free < MIN_FREE_DISK_RATIO * usage.total:
        yield failed("disk", detail, f"free space on the filesystem of {layout.data_dir} (PostgreSQL, Redis AOF)")
    else:
        yield passed("disk", detail)


# --- runtime ----------------------------------------------------------------------------------------------------


def check_supervisord(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    from appliance.supervisor import Supervisor, SupervisorDenied, SupervisorDown

    sup = Supervisor(layout.supervisor_socket, timeout_s=TIMEOUT_S)
    try:
        state = sup.state()
        processes = sup.processes()
    except SupervisorDown as exc:
        yield failed("supervisord", str(exc), "`appliance start` (then `appliance logs` if it does not stay up)")
        return
    except SupervisorDenied as exc:
        yield failed("supervisord", str(exc), f"run as root or as a member of the {settings.control.user} group")
        return
    yield passed("supervisord", f"{state} on {layout.supervisor_socket}")
    programs = [
        status_mod.Program(name=p.name, state=p.state, pid=p.pid or None, uptime_s=p.uptime_s, detail=p.spawnerr)
        for p in processes
    ]
    worker_running = status_mod.worker_running(programs)
    for program in programs:
        name = f"program {program.name}"
        problems = status_mod.program_problems(program, worker_running=worker_running)
        if problems:
            yield failed(name, problems[0], f"`appliance start`; see `appliance logs {program.name}`")
        elif program.state == "RUNNING":
            yield passed(name, f"RUNNING, pid {program.pid}")
        else:
            yield passed(name, f"{program.state} (the idle one of the two workers)")


def check_stores(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    import redis

    from appliance.stores import redis_address

    where = redis_address(settings.redis)
    try:
        found, _ = probes.probe_redis(settings)
    except redis.AuthenticationError:
        yield failed("redis", f"{where} refused the password", f"check redis.password in {layout.secrets_file}")
    except (redis.RedisError, OSError) as exc:
        reason = probes.error_text(exc)
        yield failed("redis", reason if where in reason else f"{where}: {reason}", _down_fix("redis", settings))
    else:
        cap = f"of {found.maxmemory_mb:.0f} MB" if found.maxmemory_mb else "(no maxmemory set)"
        yield passed("redis", f"{where}: {found.used_mb} MB used {cap}")
    pg = settings.postgres
    try:
        pg_found = probes.probe_postgres(settings)
    except ConnectionError as exc:
        reason = str(exc)
        if "password" in reason or "authentication" in reason:
            fix = f"check postgres.user and postgres.password in {layout.secrets_file}"
        else:
            fix = _down_fix("postgres", settings)
        yield failed("postgres", reason, fix)
    except Exception as exc:
        yield failed("postgres", f"{pg.host}:{pg.port}: {probes.error_text(exc)}", _down_fix("postgres", settings))
    else:
        yield passed("postgres", f"{pg.host}:{pg.port}/{pg.dbname}: up, {pg_found.size_mb} MB")


def _down_fix(program: str, settings: ApplianceSettings) -> str:
    if settings.runs_stores:
        return f"`appliance status`; `appliance logs {program}`"
    return f"check {program}.host and {program}.port: this worker-role box uses a shared {program}"


def http_url(ws_url: str) -> str:
    """LiveKit's signalling URL as plain HTTP: ws -> http, wss -> https."""
    return re.sub(r"^ws(s?)://", r"http\1://", ws_url).rstrip("/") + "/"


def check_livekit(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    url = http_url(settings.livekit.url)
    fix = (
        "`appliance logs livekit`"
        if settings.bundles_livekit
        else "check livekit.url and that this box reaches that LiveKit server"
    )
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        yield failed("livekit", f"{url}: {reason}", fix)
        return
    if code != 200:
        yield failed("livekit", f"{url} answered HTTP {code}", fix)
        return
    yield passed("livekit", f"{url} answers")


def check_workers(settings: ApplianceSettings, layout: Layout) -> Iterator[Check]:
    """At least one worker answers on its status port and is registered with LiveKit."""
    answers = [w for w in (probes.probe_worker(settings, name) for name in WORKERS) if w.ok]
    ready = [w for w in answers if w.registered and not w.draining]
    if ready:
        yield passed("worker", f"{ready[0].program} registered with LiveKit as {ready[0].worker_id}")
    elif answers:
        yield failed(
            "worker",
            f"{answers[0].program} is not registered with LiveKit",
            "check livekit.url, livekit.api_key and livekit.api_secret; `appliance logs worker`",
        )
    else:
        yield failed("worker", "no worker answers on its status port", "`appliance start`; `appliance logs worker`")


def doctor(config_file: Path, load: Callable[[], ApplianceSettings]) -> list[Check]:
    """Every check, in order."""
    from appliance.layout import Layout

    checks, settings = config_checks(config_file, load)
    if settings is None:
        return checks
    checks += run_checks(settings, Layout.of(settings, config_file))
    secrets = secret_values(settings)
    return [Check(c.name, c.ok, mask(c.detail, secrets), mask(c.fix, secrets)) for c in checks]
