"""``appliance install``: every step an idempotent "ensure" that says whether it changed anything.

The new settings are checked before anything is touched; a second run with nothing new changes and restarts
nothing; a changed setting restarts only the programs that read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from agent.settings import SettingsError, load_settings
from appliance import agents, console_assets, fingerprint, host, service, systemd
from appliance import programs as registry
from appliance.errors import ApplianceError
from appliance.files import write_atomic
from appliance.host import Host
from appliance.layout import Layout
from appliance.programs import WORKERS
from appliance.render import ConfigFile, postgres_bindir, programs, render_all
from appliance.resources import resource_path
from appliance.settings import ApplianceSettings
from appliance.supervisor import Supervisor
from appliance.unit import UNIT_NAME, render_unit, worker_stopwaitsecs

Report = Callable[[str, str], None]  # (outcome, what): "unchanged", "created", "changed", "started", ...

STATE_NAME = "installed.json"


@dataclass(frozen=True)
class InstallOptions:
    config_file: Path
    role: str | None = None
    # [redis] and [postgres] settings of shared stores (appliance.store_urls) and their passwords, from files.
    redis: dict[str, object] = field(default_factory=dict)
    redis_password: str | None = None
    postgres: dict[str, object] = field(default_factory=dict)
    postgres_password: str | None = None
    livekit_url: str | None = None
    livekit_api_key: str | None = None
    livekit_api_secret: str | None = None
    livekit_server_bin: Path | None = None
    livekit_client_tgz: Path | None = None  # livekit-client's npm tarball, for an install without the registry
    node_ip: str | None = None
    domain: str | None = None
    # From install.sh: also set up the box (Debian packages and services, the state file, the command, the
    # bundled livekit-server; appliance/host.py).
    host: Host | None = None


@dataclass
class Outcome:
    settings: ApplianceSettings
    layout: Layout
    restarted: list[str] = field(default_factory=list)
    started: bool = False


@dataclass(frozen=True)
class Prepared:
    """A box brought to its settings but not started: what starting it needs to know."""

    settings: ApplianceSettings
    layout: Layout
    user: pwd.struct_passwd
    changed: set[str]  # programs whose inputs changed since the last install
    previous: dict[str, Any]  # what the last install applied (empty on a first install)
    applied: dict[str, Any]  # what this one applies, recorded once the box is healthy


def install(options: InstallOptions, report: Report) -> Outcome:
    _agent_for_this_appliance(options, report)
    box = prepare(options, report)
    settings, layout = box.settings, box.layout
    outcome = Outcome(settings, layout)
    unit_changed = _ensure_unit(settings, layout, report)
    outcome.started = _ensure_running(layout, settings, report)
    ensure_database(settings, report)
    if not outcome.started and box.previous:
        if unit_changed and systemd.runs():
            outcome.restarted = _restart_unit(layout, report)
        else:
            outcome.restarted = _apply_changes(settings, layout, box.changed, report)
    _wait_healthy(settings, layout, report)
    write_state(box)
    return outcome


def _agent_for_this_appliance(options: InstallOptions, report: Report) -> None:
    """On an upgrade, the operator's agent is installed again for the new appliance (from its kept wheels, and
    checked) before the worker restarts onto it; a box that runs the sample has nothing to do."""
    if not options.config_file.exists():
        return
    try:
        settings = load_settings(ApplianceSettings, config_file=options.config_file)
    except SettingsError:
        return  # prepare() says what is wrong
    layout = Layout.of(settings, options.config_file)
    try:
        again = agents.reinstall_for_upgrade(settings, layout, progress=lambda _: None)
    except ApplianceError as exc:
        raise ApplianceError(
            f"agent: {exc} (the worker still runs the agent as installed before the upgrade: `appliance agent"
            " install` a version that fits this appliance, or `appliance agent remove`, then install again)"
        ) from None
    if again is not None:
        report("changed", f"agent {again.name} {again.version} (installed again for this appliance, from its wheels)")


def prepare(options: InstallOptions, report: Report) -> Prepared:
    """Every step that needs no running program: the settings checked, then the user, directories, config,
    secrets, rendered files and PostgreSQL cluster; also what changed since the last install."""
    config_text = _candidate_config(options)
    secrets_text = _candidate_secrets(options, config_text)
    settings = _check(config_text, secrets_text)  # raises SettingsError: nothing is touched yet
    layout = Layout.of(settings, options.config_file)
    if options.host is not None:
        _set_up_host(settings, layout, options, options.host, report)
    elif missing := [p for p in host.packages(settings) if not host.package_installed(p)]:
        raise ApplianceError(
            f"Debian packages {' '.join(missing)} are not installed (these settings need them):"
            " run install.sh, which installs them"
        )
    lk_source = _livekit_source(settings, options)
    user = _ensure_user(settings, report)
    _ensure_dirs(settings, layout, user, report)
    _write(options.config_file, config_text, mode=0o640, owner=(0, user.pw_gid), what="config", report=report)
    _write(layout.secrets_file, secrets_text, mode=0o600, owner=(user.pw_uid, user.pw_gid), what="secrets",
           report=report, keep=True)  # fmt: skip
    if lk_source is not None:
        _ensure_livekit_binary(lk_source, settings.livekit_server.bin, report)
    console_assets.ensure(settings, options.livekit_client_tgz, report)
    changed: set[str] = set()
    for config in render_all(settings, layout):
        if _write_config(config, user, report):
            changed |= config.programs
            if config.path == layout.supervisord_conf:
                changed.add("supervisord")
    if settings.runs_stores:
        _ensure_cluster(settings, layout, user, report)
    previous = _read_state(layout)
    sections = _section_hashes(settings)
    code = fingerprint.code()
    for section, digest in sections.items():
        if previous.get("sections", {}).get(section) != digest:
            changed |= registry.readers(section)
    if previous.get("code") != code:
        changed |= registry.ours()
    return Prepared(settings, layout, user, changed, previous, {"sections": sections, "code": code})


def _set_up_host(
    settings: ApplianceSettings, layout: Layout, options: InstallOptions, box: Host, report: Report
) -> None:
    livekit_given = options.livekit_server_bin is not None
    host.preflight(settings, layout, livekit_given=livekit_given, report=report)
    state = host.record_state(options.config_file, settings, report)
    host.ensure_packages(state, settings, box, report)
    host.ensure_debian_services_off(state, report)
    host.ensure_cli_link(Path(sys.prefix), report)
    if settings.bundles_livekit and not livekit_given:
        host.ensure_livekit(settings, box, report)


# --- the settings, checked before anything changes -----------------------------------------------------------


def _candidate_config(options: InstallOptions) -> str:
    path = options.config_file
    text = path.read_text() if path.exists() else resource_path("config/appliance.toml").read_text()
    doc = tomlkit.parse(text)

    def put(section: str, key: str, value: object) -> None:
        table = doc.setdefault(section, tomlkit.table())
        table[key] = value

    if options.role:
        put("control", "role", options.role)
    for section in ("redis", "postgres"):
        for key, value in getattr(options, section).items():
            put(section, key, str(value) if isinstance(value, Path) else value)
    if options.livekit_url:
        put("livekit", "url", options.livekit_url)
        put("livekit_server", "enabled", False)
    if options.livekit_server_bin and options.livekit_url is None and not path.exists():
        put("livekit_server", "enabled", True)
    if options.node_ip is not None:
        put("livekit_server", "node_ip", options.node_ip)
    if options.domain is not None:
        put("livekit_server", "domain", options.domain)
    return tomlkit.dumps(doc)


def _candidate_secrets(options: InstallOptions, config_text: str) -> str:
    """The secrets file: generated values are made once and never replaced; given ones are written."""
    path = options.config_file.parent / "secrets.toml"
    doc = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    config = tomlkit.parse(config_text).unwrap()
    role = config.get("control", {}).get("role", "all")
    bundled = role == "all" and config.get("livekit_server", {}).get("enabled", True)

    def ensure(section: str, key: str, value: str, *, replace: bool = False) -> None:
        table = doc.setdefault(section, tomlkit.table())
        if replace or key not in table:
            table[key] = value

    if role == "all":
        ensure("redis", "password", secrets.token_urlsafe(32))
        ensure("postgres", "password", secrets.token_urlsafe(32))
    if options.redis_password:
        ensure("redis", "password", options.redis_password, replace=True)
    if options.postgres_password:
        ensure("postgres", "password", options.postgres_password, replace=True)
    if options.livekit_api_key:
        ensure("livekit", "api_key", options.livekit_api_key, replace=True)
    if options.livekit_api_secret:
        ensure("livekit", "api_secret", options.livekit_api_secret, replace=True)
    if bundled:
        ensure("livekit", "api_key", "API" + secrets.token_hex(6))
        ensure("livekit", "api_secret", secrets.token_urlsafe(32))
    ensure("console", "secret_key", secrets.token_urlsafe(32))  # signs the console's sessions and links
    return tomlkit.dumps(doc)


def _check(config_text: str, secrets_text: str) -> ApplianceSettings:
    with tempfile.TemporaryDirectory(prefix="appliance-check-") as tmp:
        config, secrets_file = Path(tmp) / "appliance.toml", Path(tmp) / "secrets.toml"
        config.write_text(config_text)
        secrets_file.touch(mode=0o600)
        secrets_file.write_text(secrets_text)
        return load_settings(ApplianceSettings, config_file=config, secrets_file=secrets_file)


def _livekit_source(settings: ApplianceSettings, options: InstallOptions) -> Path | None:
    """The livekit-server binary to install, or None when the installed one stays; an error when none exists."""
    if not settings.bundles_livekit:
        return None
    if options.livekit_server_bin:
        if not os.access(options.livekit_server_bin, os.X_OK):
            raise ApplianceError(f"--livekit-server-bin {options.livekit_server_bin}: not an executable file")
        return options.livekit_server_bin
    if not os.access(settings.livekit_server.bin, os.X_OK):
        raise ApplianceError(
            f"livekit-server not found at {settings.livekit_server.bin}: pass --livekit-server-bin PATH, "
            "or --livekit-url with --livekit-api-key/--livekit-api-secret-file to use an external LiveKit"
        )
    return None


# --- the steps ------------------------------------------------------------------------------------------------


def _ensure_user(settings: ApplianceSettings, report: Report) -> pwd.struct_passwd:
    name = settings.control.user
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--home-dir", str(settings.control.data_dir),
             "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        report("created", f"user {name}")
        return pwd.getpwnam(name)
    report("unchanged", f"user {name}")
    return user


def _ensure_dirs(settings: ApplianceSettings, layout: Layout, user: pwd.struct_passwd, report: Report) -> None:
    uid, gid = user.pw_uid, user.pw_gid
    wanted = [
        # The group may read the config (operators in it run `appliance status`); only root changes it.
        (layout.etc_dir, 0o750, 0, gid),
        (layout.data_dir, 0o750, uid, gid),
        (layout.log_dir, 0o750, uid, gid),
        (layout.run_dir, 0o750, uid, gid),
        (layout.spool_dir, 0o700, uid, gid),
    ]
    if settings.runs_stores:
        wanted += [(layout.redis_dir, 0o700, uid, gid), (layout.pg_data, 0o700, uid, gid)]
    if registry.BY_NAME["prometheus"].runs_with(settings):
        wanted.append((layout.prometheus_dir, 0o700, uid, gid))
    changed = []
    for path, mode, owner, group in wanted:
        if not path.exists():
            path.mkdir(parents=True)
            changed.append(str(path))
        st = path.stat()
        if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (mode, owner, group):
            os.chown(path, owner, group)
            path.chmod(mode)
            if str(path) not in changed:
                changed.append(str(path))
    report("changed" if changed else "unchanged", "directories" + (f" ({', '.join(changed)})" if changed else ""))


def _write(
    path: Path, text: str, *, mode: int, owner: tuple[int, int], what: str, report: Report, keep: bool = False
) -> bool:
    """Write ``text`` atomically when it differs; returns whether it did."""
    existed = path.exists()
    if existed and path.read_text() == text:
        st = path.stat()
        if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (mode, *owner):
            os.chown(path, *owner)
            path.chmod(mode)
        report("unchanged", f"{what} {path}")
        return False
    write_atomic(path, text, mode=mode, owner=owner)
    report("changed" if existed else "created", f"{what} {path}" + (" (new values added)" if keep and existed else ""))
    return True


def _write_config(config: ConfigFile, user: pwd.struct_passwd, report: Report) -> bool:
    if config.secret:
        return _write(config.path, config.text, mode=0o600, owner=(user.pw_uid, user.pw_gid), what="config",
                      report=report)  # fmt: skip
    return _write(config.path, config.text, mode=0o640, owner=(0, user.pw_gid), what="config", report=report)


def _ensure_livekit_binary(source: Path, target: Path, report: Report) -> None:
    if target.exists() and _digest(target) == _digest(source):
        report("unchanged", f"livekit-server {target}")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, tmp)
    tmp.chmod(0o755)
    tmp.replace(target)
    report("created", f"livekit-server {target}")


def _digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _ensure_cluster(settings: ApplianceSettings, layout: Layout, user: pwd.struct_passwd, report: Report) -> None:
    if (layout.pg_data / "PG_VERSION").exists():
        report("unchanged", f"PostgreSQL cluster {layout.pg_data}")
        return
    password = settings.postgres.password
    if password is None:
        raise ApplianceError("postgres.password: unset (it belongs in secrets.toml)")
    with tempfile.TemporaryDirectory(prefix="appliance-initdb-") as tmp:
        os.chown(tmp, user.pw_uid, user.pw_gid)
        pwfile = Path(tmp) / "pw"
        pwfile.touch(mode=0o600)
        pwfile.write_text(password.get_secret_value())
        os.chown(pwfile, user.pw_uid, user.pw_gid)
        subprocess.run(
            [str(postgres_bindir() / "initdb"), "-D", str(layout.pg_data), f"--username={settings.postgres.user}",
             f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True, text=True, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
            cwd="/",
        )  # fmt: skip
    report("created", f"PostgreSQL cluster {layout.pg_data}")


def _ensure_unit(settings: ApplianceSettings, layout: Layout, report: Report) -> bool:
    """The unit file, and systemd told of a change (daemon-reload); returns whether it changed."""
    others = [p.stopwaitsecs for p in programs(settings, layout, journal=False) if p.name != "worker"]
    text = render_unit(
        user=settings.control.user,
        venv=layout.venv,
        config_file=layout.config_file,
        supervisord_conf=layout.supervisord_conf,
        data_dir=layout.data_dir,
        log_dir=layout.log_dir,
        run_dir=layout.run_dir,
        drain_timeout_s=settings.worker.drain_timeout_s,
        other_stopwaitsecs=others,
    )
    layout.unit_dir.mkdir(parents=True, exist_ok=True)
    changed = _write(layout.unit_file, text, mode=0o644, owner=(0, 0), what="systemd unit", report=report)
    if systemd.runs():
        if changed:
            systemd.systemctl("daemon-reload")
        systemd.systemctl("enable", layout.unit_file.name)
    return changed


def _restart_unit(layout: Layout, report: Report) -> list[str]:
    """A changed unit applies only to processes it starts (its sandbox, its limits): restart the service. The stop
    is the graceful one (the worker drains, open rooms are interrupted and resumed once it is back); it also
    applies every other change, since every program starts anew."""
    systemd.systemctl("restart", UNIT_NAME)
    sup = Supervisor(layout.supervisor_socket)
    deadline = time.monotonic() + 60
    while not sup.answers():
        if time.monotonic() > deadline:
            raise ApplianceError("appliance.service did not come back within 60 s: see `appliance logs`")
        time.sleep(0.2)
    report("restarted", f"{UNIT_NAME} (its unit changed), every program")
    return ["every program"]


def _ensure_running(layout: Layout, settings: ApplianceSettings, report: Report) -> bool:
    started = service.start(settings, layout)
    report("started" if started else "unchanged", "supervisord" + (" and its programs" if started else " running"))
    return started


def ensure_database(settings: ApplianceSettings, report: Report) -> None:
    """The database (on a box running its own PostgreSQL) and its schema's migrations."""
    if not settings.runs_stores:
        _ensure_schema(settings, report)  # a shared database: made by whoever runs it, migrated by any box
        return
    from psycopg import sql

    from appliance.stores import postgres_connection

    pg = settings.postgres
    admin = pg.model_copy(update={"dbname": "postgres"})
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = postgres_connection(admin)
            break
        except ApplianceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (pg.dbname,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(pg.dbname)))
            report("created", f"database {pg.dbname}")
    _ensure_schema(settings, report)


def _ensure_schema(settings: ApplianceSettings, report: Report) -> None:
    """The schema's migrations, applied once whichever box gets there first (they hold an advisory lock)."""
    import psycopg

    from appliance.stores import apply_migrations

    try:
        applied = apply_migrations(settings.postgres)
    except psycopg.Error as exc:
        raise ApplianceError(f"migrations failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    report("changed" if applied else "unchanged", "schema" + (f" ({', '.join(applied)} applied)" if applied else ""))


def _apply_changes(settings: ApplianceSettings, layout: Layout, changed: set[str], report: Report) -> list[str]:
    """Reload supervisord's programs when their config changed; restart the programs whose inputs changed."""
    sup = Supervisor(layout.supervisor_socket)
    restarted: list[str] = []
    if "supervisord" in changed:
        added, changed_groups, removed = sup.reload()
        if added or changed_groups or removed:
            sup.apply(
                added, changed_groups, removed, stop_timeout_s=worker_stopwaitsecs(settings.worker.drain_timeout_s) + 10
            )
            report("changed", f"programs (added {added}, changed {changed_groups}, removed {removed})")
            changed -= set(changed_groups) | set(added)
            restarted += changed_groups
    known = {p.name for p in sup.processes()}
    # In start order; the worker last, gracefully.
    for name in (s for s in registry.SERVICES if s in changed and s in known and s != "worker"):
        sup.stop(name, timeout_s=120)
        sup.start(name)
        report("restarted", name)
        restarted.append(name)
    if "worker" in changed and not set(WORKERS) & set(restarted):
        now_running = service.restart_worker(settings, layout, now=False, progress=lambda _: None)
        report("restarted", f"worker, gracefully (now {now_running})")
        restarted.append("worker")
    return restarted


def _wait_healthy(settings: ApplianceSettings, layout: Layout, report: Report, timeout_s: float = 180) -> None:
    """Until `appliance status` says healthy (its verdict, the one definition); the worker is started if neither
    of the two runs (a reload may leave both stopped)."""
    from appliance import status

    sup = Supervisor(layout.supervisor_socket)
    deadline = time.monotonic() + timeout_s
    while True:
        if service.running_worker(sup) is None:
            sup.start("worker", wait=False)
        found = status.collect(settings, layout)
        if found.exit_code == status.HEALTHY:
            workers = ", ".join(w.program for w in found.workers if w.registered)
            report("healthy", f"{found.verdict}; {workers} registered with LiveKit")
            return
        if time.monotonic() > deadline:
            raise ApplianceError(f"not healthy after {timeout_s:.0f} s: {'; '.join(found.problems)}")
        time.sleep(0.5)


# --- what was applied last time --------------------------------------------------------------------------------


def _section_hashes(settings: ApplianceSettings) -> dict[str, str]:
    """A digest per settings section, secrets included (a new password must restart its readers); no secret is
    stored, only digests."""
    out: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        data = value.model_dump(mode="python")
        text = json.dumps(_reveal(data), sort_keys=True, default=str)
        out[name] = hashlib.sha256(text.encode()).hexdigest()
    return out


def _reveal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    get = getattr(value, "get_secret_value", None)
    return get() if callable(get) else value


def _read_state(layout: Layout) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((layout.data_dir / STATE_NAME).read_text())
        return data
    except (FileNotFoundError, ValueError):
        return {}


def write_state(box: Prepared) -> None:
    """What this install applied: the next one restarts what differs."""
    text = json.dumps(box.applied, indent=2)
    write_atomic(box.layout.data_dir / STATE_NAME, text, mode=0o644, owner=(0, box.user.pw_gid))


def summary(outcome: Outcome, elapsed_s: float) -> list[str]:
    """What install and reconfigure print when done: what restarted, what runs, where things are, what next."""
    layout = outcome.layout
    restarted = ", ".join(outcome.restarted) or ("every program started" if outcome.started else "nothing")
    running = [f"{p.name} ({p.pid})" for p in Supervisor(layout.supervisor_socket).processes() if p.running]
    return [
        f"done in {elapsed_s:.1f} s; restarted: {restarted}",
        f"runs:    {', '.join(running)} under supervisord ({layout.supervisor_socket})",
        f"config:  {layout.config_file} (secrets in {layout.secrets_file})",
        f"logs:    `appliance logs [PROGRAM] [-f]` ({layout.log_dir} or the journal)",
        "next:    `appliance status`, `appliance chat ROOM`, `appliance token ROOM IDENTITY`",
    ]
