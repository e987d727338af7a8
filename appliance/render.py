"""The service configs rendered from the templates in config/: what each file holds and which programs read it."""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args

import jinja2

from agent.store import acl
from agent.store.acl import AclUser
from appliance.layout import Layout
from appliance.logs import postgres_log_lines, program_output, redis_log_lines, use_journal
from appliance.resources import resource_path
from appliance.settings import ApplianceSettings
from appliance.tuning import postgres_tuning
from appliance.unit import worker_stopwaitsecs

WORKERS = ("worker", "worker-alt")


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    text: str
    # Files holding a secret are readable by the service user only.
    secret: bool
    # The programs to restart when the file changes.
    programs: frozenset[str]


@dataclass(frozen=True)
class Program:
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


def programs(settings: ApplianceSettings, layout: Layout, *, journal: bool) -> list[Program]:
    env = f'APPLIANCE_CONFIG="{layout.config_file}",HOME="{layout.data_dir}"'
    python = layout.bin("python")
    result: list[Program] = []
    if settings.runs_stores:
        result += [
            Program(
                "redis",
                f"{redis_server()} {layout.redis_conf}",
                priority=10,
                # TERM is Redis's clean shutdown: the AOF is flushed and fsynced before it exits.
                stopwaitsecs=60,
                environment=env,
            ),
            Program(
                "postgres",
                f"{postgres_bindir() / 'postgres'} -c config_file={layout.postgres_conf}",
                priority=20,
                # INT is PostgreSQL's "fast" shutdown: open transactions roll back, a checkpoint is written.
                # TERM ("smart") would wait for every client to leave, which a stopping worker may not yet have.
                stopsignal="INT",
                stopwaitsecs=120,
                environment=env,
            ),
        ]
    if settings.bundles_livekit:
        result.append(
            Program(
                "livekit",
                f"{settings.livekit_server.bin} --config {layout.livekit_conf}",
                priority=30,
                # On TERM livekit-server refuses new sessions, then waits for every participant to leave, without
                # limit (its second signal forces; supervisord sends one). It stops after the worker has drained,
                # so the people left are in rooms without an agent: waiting for them serves nothing. KILL after 5 s.
                stopwaitsecs=5,
                environment=env,
            )
        )
    # On the appliance's own Redis each data-plane program connects as its own ACL user (agent/store/acl.py).
    flusher_env = env + (',APPLIANCE_REDIS__ACL_USER="flusher"' if settings.runs_stores else "")
    worker_env = env + (',APPLIANCE_REDIS__ACL_USER="worker"' if settings.runs_stores else "")
    result.append(
        Program(
            "flusher",
            f"{python} -m agent.flusher",
            priority=40,
            # TERM: the flusher writes what it has read, acknowledges it and exits.
            stopwaitsecs=60,
            environment=flusher_env,
        )
    )
    alt_ports = (
        f',APPLIANCE_WORKER__HEALTH_PORT="{settings.control.alt_health_port}"'
        f',APPLIANCE_WORKER__STATUS_PORT="{settings.control.alt_status_port}"'
    )
    for name in WORKERS:
        result.append(
            Program(
                name,
                f"{python} -m agent.worker",
                priority=50,
                # TERM to the worker alone (stopasgroup=false): it drains; room processes under forkserver do
                # not ignore TERM, so a TERM to the whole group would cut every live room at once.
                stopwaitsecs=worker_stopwaitsecs(settings.worker.drain_timeout_s),
                startsecs=5,
                # worker-alt is the second worker a graceful restart starts before the running one drains.
                autostart=name == "worker",
                environment=worker_env if name == "worker" else worker_env + alt_ports,
                comments=(
                    "stopasgroup=false: TERM reaches the worker only, which drains its rooms;",
                    "killasgroup=true: the KILL after stopwaitsecs reaches its room processes too.",
                ),
                directives={"stopasgroup": "false", "killasgroup": "true"},
            )
        )
    return [_with_output(program, layout, journal=journal) for program in result]


def _with_output(program: Program, layout: Layout, *, journal: bool) -> Program:
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
    return files
