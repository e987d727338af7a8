"""The service configs rendered from the templates in config/: what each file holds and which programs read it."""

from __future__ import annotations

import ipaddress
import shlex
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args

import jinja2

from agent.store import acl
from agent.store.acl import AclUser
from appliance import programs as registry
from appliance.layout import Layout
from appliance.logs import postgres_log_lines, program_output, redis_log_lines, use_journal
from appliance.resources import resource_path
from appliance.settings import ApplianceSettings
from appliance.tuning import postgres_tuning
from appliance.unit import worker_stopwaitsecs


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    text: str
    # Files holding a secret are readable by the service user only.
    secret: bool
    # The programs to restart when the file changes.
    programs: frozenset[str]


@dataclass(frozen=True)
class ProgramSection:
    """A [program:x] section of supervisord.conf."""

    name: str
    command: str
    priority: int
    stopwaitsecs: int
    stopsignal: str = "TERM"
    startsecs: int = 3
    autostart: bool = True
    environment: str = ""
    comments: tuple[str, ...] = ()
    directives: dict[str, str] = field(default_factory=dict)


def postgres_bindir() -> Path:
    """The newest PostgreSQL's binaries (Debian installs each major version side by side)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise FileNotFoundError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres)")
    return found[-1].parent


def redis_server() -> str:
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def prometheus_bin() -> str:
    return shutil.which("prometheus") or "/usr/bin/prometheus"


def _prometheus_command(settings: ApplianceSettings, layout: Layout) -> str:
    m = settings.metrics
    # The admin API gives `appliance backup` its consistent snapshot; like the rest, only loopback reaches it.
    return (
        f"{prometheus_bin()} --config.file={layout.prometheus_conf} --storage.tsdb.path={layout.prometheus_dir}"
        f" --storage.tsdb.retention.time={m.retention} --storage.tsdb.retention.size={m.retention_size}"
        f" --web.listen-address=127.0.0.1:{m.prometheus_port} --web.enable-admin-api"
    )


def scrape_target(settings: ApplianceSettings) -> str:
    """Where Prometheus finds the exporter: its own address, or loopback when it listens on every address."""
    bind = ipaddress.ip_address(settings.metrics.bind)
    host = "127.0.0.1" if bind.is_unspecified else str(bind)
    return f"[{host}]:{settings.metrics.port}" if ":" in host else f"{host}:{settings.metrics.port}"


def _command(name: str, settings: ApplianceSettings, layout: Layout) -> str:
    python = layout.bin("python")
    commands = {
        "redis": lambda: f"{redis_server()} {layout.redis_conf}",
        "postgres": lambda: f"{postgres_bindir() / 'postgres'} -c config_file={layout.postgres_conf}",
        "livekit": lambda: f"{settings.livekit_server.bin} --config {layout.livekit_conf}",
        "metrics": lambda: f"{python} -m appliance.metrics",
        "prometheus": lambda: _prometheus_command(settings, layout),
        "console": lambda: f"{python} -m appliance.console",
        "flusher": lambda: f"{python} -m agent.flusher",
        "worker": lambda: f"{python} -m agent.worker",
        "worker-alt": lambda: f"{python} -m agent.worker",
    }
    return commands[name]()


def programs(settings: ApplianceSettings, layout: Layout, *, journal: bool) -> list[ProgramSection]:
    """The [program:x] sections of this box's programs (appliance/programs.py), in start order."""
    base_env = f'APPLIANCE_CONFIG="{layout.config_file}",HOME="{layout.data_dir}"'
    result = []
    for program in registry.on_this_box(settings):
        env = base_env
        # On the appliance's own Redis each data-plane program connects as its own ACL user (agent/store/acl.py).
        if program.redis_user and settings.runs_stores:
            env += f',APPLIANCE_REDIS__ACL_USER="{program.redis_user}"'
        if program.records and settings.metrics.enabled:
            env += f',PROMETHEUS_MULTIPROC_DIR="{layout.figures_dir(program.name)}"'
        # A worker whose ports are not [worker]'s own (the second worker) is told its own.
        for port in program.ports:
            if program.worker and port.setting != f"worker.{port.purpose}_port":
                env += f',APPLIANCE_WORKER__{port.purpose.upper()}_PORT="{port.number(settings)}"'
        section = ProgramSection(
            program.name,
            _command(program.name, settings, layout),
            priority=program.priority,
            stopsignal=program.stopsignal,
            stopwaitsecs=program.stopwaitsecs or worker_stopwaitsecs(settings.worker.drain_timeout_s),
            startsecs=program.startsecs,
            autostart=program.autostart,
            environment=env,
        )
        if program.worker:
            # TERM to the worker alone: room processes under forkserver do not ignore TERM, so a TERM to the
            # whole group would cut every live room at once.
            section = replace(
                section,
                comments=(
                    "stopasgroup=false: TERM reaches the worker only, which drains its rooms;",
                    "killasgroup=true: the KILL after stopwaitsecs reaches its room processes too.",
                ),
                directives={"stopasgroup": "false", "killasgroup": "true"},
            )
        result.append(_with_output(section, layout, journal=journal))
    return result


def _with_output(program: ProgramSection, layout: Layout, *, journal: bool) -> ProgramSection:
    """Each program's lines go to the journal under its own identifier and level, or to a rotated file."""
    output = program_output(program.name, journal=journal, log_dir=layout.log_dir, python=layout.bin("python"))
    extra = "".join(f',{key}="{value}"' for key, value in output.environment.items())
    return replace(
        program,
        command=" ".join([*(shlex.quote(part) for part in output.command_prefix), program.command]),
        directives={**program.directives, **output.directives},
        environment=program.environment + extra,
    )


def render_all(settings: ApplianceSettings, layout: Layout, *, journal: bool | None = None) -> list[ConfigFile]:
    journal = use_journal(settings.logging.journal) if journal is None else journal
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_path("config")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        autoescape=False,
    )
    context = {"settings": settings, "layout": layout}
    files = [
        ConfigFile(
            layout.supervisord_conf,
            env.get_template("supervisord.conf.j2").render(
                **context, programs=programs(settings, layout, journal=journal)
            ),
            secret=False,
            programs=frozenset(),
        )
    ]
    if settings.runs_stores:
        redis_password = settings.redis.password.get_secret_value() if settings.redis.password else ""
        acl_users = {
            user: " ".join(acl.rules(redis_password, user, settings.store.key_prefix)) for user in get_args(AclUser)
        }
        tuning = postgres_tuning(max_rooms=settings.worker.max_rooms, idle_processes=settings.worker.num_idle_processes)
        files += [
            ConfigFile(
                layout.redis_conf,
                env.get_template("redis.conf.j2").render(
                    **context,
                    redis_password=redis_password,
                    acl_users=acl_users,
                    log_lines=redis_log_lines(journal=journal),
                ),
                secret=True,
                programs=frozenset({"redis"}),
            ),
            ConfigFile(
                layout.postgres_conf,
                env.get_template("postgresql.conf.j2").render(
                    **context, tuning=tuning, log_lines=postgres_log_lines(journal=journal)
                ),
                secret=False,
                programs=frozenset({"postgres"}),
            ),
            ConfigFile(
                layout.pg_hba,
                env.get_template("pg_hba.conf.j2").render(**context),
                secret=False,
                programs=frozenset({"postgres"}),
            ),
        ]
    if settings.bundles_livekit:
        key, secret = settings.livekit.api_key, settings.livekit.api_secret
        if key is None or secret is None:
            raise ValueError("the bundled livekit-server needs livekit.api_key and livekit.api_secret")
        files.append(
            ConfigFile(
                layout.livekit_conf,
                env.get_template("livekit.yaml.j2").render(
                    **context,
                    lk=settings.livekit_server,
                    api_key=key.get_secret_value(),
                    api_secret=secret.get_secret_value(),
                ),
                secret=True,
                programs=frozenset({"livekit"}),
            )
        )
    if registry.BY_NAME["prometheus"].runs_with(settings):
        token = settings.metrics.token.get_secret_value() if settings.metrics.token else None
        files += [
            ConfigFile(
                layout.prometheus_conf,
                env.get_template("prometheus.yml.j2").render(**context, target=scrape_target(settings), token=token),
                secret=token is not None,
                programs=frozenset({"prometheus"}),
            ),
            ConfigFile(
                layout.prometheus_rules,
                resource_path("config/prometheus/alerts.yml").read_text(),
                secret=False,
                programs=frozenset({"prometheus"}),
            ),
        ]
    return files
