"""Settings of the data plane: the sections the worker and the flusher run on, and their loader.

Source order, highest first: environment (``APPLIANCE_<SECTION>__<KEY>``), the secrets file, the TOML file,
defaults. Secrets (every ``SecretStr`` field) may come only from the secrets file (mode 0600) or the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from agent.store.acl import AclUser

DEFAULT_CONFIG = Path("/etc/appliance/appliance.toml")
SECRETS_NAME = "secrets.toml"
# The control plane keeps its own settings under these tables; the data plane leaves them alone.
CONTROL_SECTIONS = ("control", "livekit_server", "metrics", "console")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def no_credentials(value: str, secret: str) -> str:
    """A URL or host with no user or password in it: appliance.toml is readable by the service's group and shown by
    `appliance config show`, so a password there would leak; its place is ``secret`` in secrets.toml."""
    _, scheme, rest = value.partition("://")
    authority = (rest if scheme else value).split("/", 1)[0]
    if "@" in authority or "password=" in value.lower():  # user:password@host, or a DSN's or a query's password=
        raise ValueError(f"holds a user or password: put the password in secrets.toml ({secret})")
    return value


class RedisSettings(Section):
    """Where the Redis tier lives. A unix socket, when set, wins over host and port."""

    host: str = "127.0.0.1"
    port: int = Field(6479, ge=1, le=65535)
    unix_socket: Path | None = None
    db: int = Field(0, ge=0)
    password: SecretStr | None = None
    # The ACL user a data-plane program connects as on the appliance's own Redis (set per program by the
    # rendered supervisord.conf; its password is derived from `password`, see agent/store/acl.py). None: the
    # default user with `password`, as on a shared Redis.
    acl_user: AclUser | None = None
    # The ACL user on a Redis elsewhere (a shared one), with `password`; None: its default user.
    username: str | None = Field(None, min_length=1)
    # One round trip is ~0.1 ms; a Redis that takes this long is treated as down (see store.breaker_interval_s).
    timeout_s: float = Field(0.5, gt=0, le=30)
    # everysec: a killed Redis loses nothing, a crashed machine up to ~1 s (see README); always: nothing, slower.
    appendfsync: Literal["everysec", "always"] = "everysec"
    # TLS to a Redis elsewhere (a rediss:// URL): its certificate is verified, host name included, against
    # tls_ca_file (None: the system's CAs); tls_cert_file and tls_key_file when it asks for a client certificate.
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return no_credentials(value, "redis.password")

    @model_validator(mode="after")
    def _tls_over_tcp(self) -> Self:
        if self.tls and self.unix_socket is not None:
            raise ValueError("redis.tls: TLS is for host and port, not redis.unix_socket")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("redis.tls_cert_file and redis.tls_key_file go together")
        return self


class PostgresSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(5532, ge=1, le=65535)
    dbname: str = "appliance"
    user: str = "appliance"
    password: SecretStr | None = None
    connect_timeout_s: float = Field(2.0, gt=0, le=60)
    # libpq's: "verify-full" for a PostgreSQL elsewhere (its certificate checked against sslrootcert, host name
    # included); "prefer" (libpq's default) suits the appliance's own on loopback.
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    sslrootcert: Path | None = None
    pool_min: int = Field(1, ge=0)
    pool_max: int = Field(4, ge=1)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return no_credentials(value, "postgres.password")

    @model_validator(mode="after")
    def _pool_bounds(self) -> Self:
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must not exceed pool_max")
        return self

    def conninfo(self) -> str:
        """libpq connection string without the password (it is passed separately, never logged)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            connect_timeout=max(1, round(self.connect_timeout_s)),
            application_name="appliance",
            sslmode=self.sslmode,
            **({"sslrootcert": str(self.sslrootcert)} if self.sslrootcert else {}),
        )


class StoreSettings(Section):
    key_prefix: str = Field("appl:", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    window_size: int = Field(20, ge=1, le=1000)
    cache_size: int = Field(100, ge=1, le=10_000)
    cache_ttl_s: int = Field(86_400, ge=1)
    max_content_bytes: int = Field(65_536, ge=1)
    max_metadata_bytes: int = Field(16_384, ge=2)
    spool_dir: Path = Path("/var/lib/appliance/spool")
    # After a Redis failure the store bypasses Redis this long before trying it again: a dead Redis then costs
    # one timeout per interval, not one per message.
    breaker_interval_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _window_fits_cache(self) -> Self:
        if self.window_size > self.cache_size:
            raise ValueError("window_size must not exceed cache_size")
        return self


class FlusherSettings(Section):
    batch_size: int = Field(500, ge=1, le=10_000)
    # How long a read waits for new entries; also bounds how late a SIGTERM is noticed.
    block_ms: int = Field(100, ge=1, le=10_000)
    # Entries pending longer than this belong to a dead consumer and are claimed again.
    claim_idle_ms: int = Field(30_000, ge=100)
    claim_every_s: float = Field(10.0, gt=0)
    spool_scan_s: float = Field(3.0, gt=0)
    stats_every_s: float = Field(1.0, gt=0)
    # Consumer name in the stream's group; empty: made once per install (hostname and a random part) and kept in
    # store.spool_dir, so it differs between installs on one host and stays the same across restarts.
    consumer: str = ""


FACTORY = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"  # package.module:callable


class WorkerSettings(Section):
    """The livekit-agents worker: one process per room."""

    # The operator's agent: "package.module:factory", a callable returning a livekit Agent (instructions, tools).
    agent: str = Field("agent.sample:build", pattern=FACTORY)
    # Where the factory's package is, when it is not in the appliance's venv: the directory `appliance agent
    # install` made for the agent's version (appended to sys.path, so the appliance's packages always win).
    agent_path: Path | None = None
    agent_name: str = ""  # empty: LiveKit dispatches every new room to us automatically
    max_rooms: int = Field(50, ge=1)  # the load we report is rooms / max_rooms
    num_idle_processes: int = Field(2, ge=0)  # prewarmed room processes, ready before a room arrives
    job_memory_warn_mb: float = Field(300, ge=0)
    job_memory_limit_mb: float = Field(500, ge=0)  # a room's process over this is killed (0: no limit)
    # livekit's sampling monitor (every 5 s) enforces job_memory_limit_mb; the RLIMIT_DATA backstop always does.
    memory_monitor: bool = True
    drain_timeout_s: int = Field(300, ge=1)  # on SIGTERM, active rooms get this long to finish
    # Attempts to reach LiveKit (backing off up to 10 s) before the worker exits non-zero to be restarted.
    connect_retries: int = Field(16, ge=0)
    health_port: int = Field(8081, ge=0, le=65535)  # livekit's own health server, on health_bind
    # Where livekit's health server (and its Prometheus endpoint) listens: loopback on a box; in a pod, its own
    # address (0.0.0.0), where the kubelet probes it and Prometheus scrapes it.
    health_bind: str = "127.0.0.1"
    # livekit-agents' Prometheus endpoint on health_bind (lk_agents_active_job_count: the rooms this worker
    # serves, what an autoscaler scales on); 0: off. For a worker alone in its container or pod: on a box the
    # exporter ([metrics]) serves the rooms, and the two workers of a graceful restart would share the port.
    prometheus_port: int = Field(0, ge=0, le=65535)
    status_port: int = Field(8082, ge=0, le=65535)  # our JSON view of rooms and processes, on 127.0.0.1
    departure_timeout_s: float = Field(20, ge=0)  # the room's process ends this long after its last human left
    greeting: str = "Hello! I'm listening to everyone in this room."
    resume_greeting: str = "I'm back, and I remember our conversation."
    max_deaths: int = Field(3, ge=1)  # a room whose agent died this often within death_window_s is not revived
    death_window_s: float = Field(600, gt=0)
    reconcile_every_s: float = Field(5, gt=0)  # how often rooms without an agent are looked for
    orphan_after_s: float = Field(5, ge=0)  # a room must lack an agent this long before it is dispatched again
    # After a dispatch, the room is left alone this long for its agent to join (a loaded box can take a while):
    # dispatching it again sooner could put two agents in it.
    dispatch_grace_s: float = Field(60, ge=1)

    @field_validator("health_bind")
    @classmethod
    def _an_address(cls, value: str) -> str:
        ipaddress.ip_address(value)  # a ValueError names the field
        return value


class ModelSettings(Section):
    """The models a room's agent uses. "offline" is a deterministic model that needs no network."""

    llm: Literal["offline", "openai"] = "offline"
    openai_base_url: str = ""  # empty: the provider's default; any OpenAI-compatible server works
    openai_model: str = "gpt-4o-mini"
    openai_api_key: SecretStr | None = None
    # Voice out: "openai" speaks every reply (as an audio track, besides the text) through an OpenAI-compatible
    # text-to-speech endpoint at the same base URL and key.
    tts: Literal["none", "openai"] = "none"
    openai_tts_model: str = "gpt-4o-mini-tts"
    openai_tts_voice: str = "alloy"
    # Voice in: "openai" transcribes the room's linked speaker (livekit's audio input hears one participant)
    # through an OpenAI-compatible endpoint; it needs a VAD to find where a turn ends.
    stt: Literal["none", "openai"] = "none"
    openai_stt_model: str = "gpt-4o-mini-transcribe"
    vad: Literal["none", "silero"] = "none"  # silero's model ships inside its package: no download

    @field_validator("openai_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return no_credentials(value, "models.openai_api_key")

    @model_validator(mode="after")
    def _stt_needs_vad(self) -> Self:
        if self.stt != "none" and self.vad == "none":
            raise ValueError('stt needs a vad (set vad = "silero") to tell where a spoken turn ends')
        return self


class LiveKitSettings(Section):
    url: str = "ws://127.0.0.1:7880"
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return no_credentials(value, "livekit.api_key, livekit.api_secret")


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What the agent's environment may not set: the appliance's own settings, and what changes how Python, the
# dynamic linker or the service's account behave.
RESERVED_ENV_PREFIXES = ("APPLIANCE_", "PYTHON", "LD_")
RESERVED_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "VIRTUAL_ENV"})


def check_env_name(name: str) -> str:
    """An environment variable name the operator's agent may be given, or ValueError naming it."""
    if not ENV_NAME.match(name):
        raise ValueError(f"agent.env.{name}: not an environment variable name (letters, digits and _)")
    if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
        raise ValueError(f"agent.env.{name}: reserved for the appliance and Python; choose another name")
    return name


class OperatorAgentSettings(Section):
    """[agent]: the environment the operator's agent runs with, given only to the worker and its room processes.

    ``env`` is [agent.env] of appliance.toml (plain values); ``secret_env`` is [agent.env] of secrets.toml
    (provider keys: masked wherever settings are shown, never on a command line).
    """

    env: dict[str, str] = {}
    secret_env: dict[str, SecretStr] = {}

    @field_validator("env", "secret_env")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            check_env_name(name)
        return value

    @model_validator(mode="after")
    def _one_home(self) -> Self:
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(f"agent.env.{both[0]}: set in both appliance.toml and secrets.toml; keep one")
        return self

    def environ(self) -> dict[str, str]:
        return self.env | {name: value.get_secret_value() for name, value in self.secret_env.items()}


class LoggingSettings(Section):
    """How the worker and the flusher write their lines (supervisord carries them to the journal or to files)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # True: "<N>" syslog levels and no time, for journald; false: timestamped plain lines, for files.
    # "auto": the journal's format when stderr is connected to journald. The control plane sets it per program.
    journal: bool | Literal["auto"] = "auto"


class AgentSettings(BaseSettings):
    """Everything the data plane runs on."""

    model_config = SettingsConfigDict(env_prefix="APPLIANCE_", env_nested_delimiter="__", extra="forbid", frozen=True)

    redis: RedisSettings = RedisSettings()
    postgres: PostgresSettings = PostgresSettings()
    store: StoreSettings = StoreSettings()
    flusher: FlusherSettings = FlusherSettings()
    worker: WorkerSettings = WorkerSettings()
    models: ModelSettings = ModelSettings()
    livekit: LiveKitSettings = LiveKitSettings()
    logging: LoggingSettings = LoggingSettings()
    agent: OperatorAgentSettings = OperatorAgentSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The loader passes TOML and secrets as init values; the environment overrides both.
        return (env_settings, init_settings)


class SettingsError(Exception):
    """Settings that cannot be used; ``errors`` holds one line per problem, each naming the field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


S = TypeVar("S", bound=AgentSettings)


def config_path(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("APPLIANCE_CONFIG", str(DEFAULT_CONFIG)))


def secrets_path(environ: Mapping[str, str]) -> Path:
    default = config_path(environ).parent / SECRETS_NAME
    return Path(environ.get("APPLIANCE_SECRETS", str(default)))


def load_settings(model: type[S], *, config_file: Path | None = None, secrets_file: Path | None = None) -> S:
    """Load ``model`` from the TOML file, the secrets file and the environment, or raise SettingsError.

    The paths come from APPLIANCE_CONFIG and APPLIANCE_SECRETS (default: secrets.toml beside the config), unless
    given (the installer checks candidate files before it writes them).
    """
    environ = os.environ
    cfg_file = config_file or config_path(environ)
    sec_file = secrets_file or (cfg_file.parent / SECRETS_NAME if config_file else secrets_path(environ))
    values = _read_toml(cfg_file, required=config_file is not None or "APPLIANCE_CONFIG" in environ)
    for section in CONTROL_SECTIONS:
        if section not in model.model_fields:
            values.pop(section, None)
    secret_fields = secret_paths(model)
    errors = [
        f"{path}: secrets are not allowed in {cfg_file.name}; put it in {sec_file} (mode 0600)"
        f" or APPLIANCE_{path.upper().replace('.', '__')}"
        for path in _leaf_paths(values)
        if path in secret_fields
    ]
    secrets = _read_secrets(sec_file, required=secrets_file is not None or "APPLIANCE_SECRETS" in environ)
    for section in CONTROL_SECTIONS:  # the control plane's secrets (console.secret_key, metrics.token) too
        if section not in model.model_fields:
            secrets.pop(section, None)
    errors += _agent_env_in_place(values, secrets)
    known = {path for path, _ in _fields(model)}
    errors += [
        f"{path}: {sec_file.name} holds only secrets; put this setting in {cfg_file.name}"
        if path in known
        else f"{path}: unknown setting (check the spelling)"
        for path in _leaf_paths(secrets)
        if path not in secret_fields and not path.startswith("agent.secret_env.")
    ]
    if errors:
        raise SettingsError(errors)
    try:
        return model(**_merge(values, secrets))
    except ValidationError as exc:
        raise SettingsError([_describe(err) for err in exc.errors()]) from None
    except PydanticSettingsError as exc:  # an environment value that is not even parseable
        raise SettingsError([f"environment: {exc}"]) from None


def _agent_env_in_place(values: dict[str, Any], secrets: dict[str, Any]) -> list[str]:
    """[agent.env] of the secrets file becomes agent.secret_env (the operator writes [agent.env] in either file;
    which file it is in says whether it is a secret). Returns the errors: secret_env is no name to write."""
    errors = [
        f"agent.secret_env: unknown setting (a secret variable goes in [agent.env] of {SECRETS_NAME})"
        for table in (values, secrets)
        if isinstance(table.get("agent"), dict) and "secret_env" in table["agent"]
    ]
    agent = secrets.get("agent")
    if isinstance(agent, dict) and isinstance(agent.get("env"), dict):
        agent["secret_env"] = agent.pop("env")
    return errors


def load_or_exit(model: type[S]) -> S:
    """For entry points: the settings, or one line per error on stderr and exit 2."""
    try:
        return load_settings(model)
    except SettingsError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


def _describe(err: Any) -> str:
    field = ".".join(str(part) for part in err["loc"]) or "settings"
    reason = err["msg"]
    if err["type"] == "extra_forbidden":
        reason = "unknown setting (check the spelling)"
    elif err["type"] == "value_error":
        reason = str(err["ctx"]["error"])  # our own validators' words, without pydantic's "Value error, "
        if not err["loc"] or reason.startswith(f"{err['loc'][0]}."):
            return reason  # a validator of a whole section, or of the whole: it names its field itself
    return f"{field}: {reason}"


def _read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise SettingsError([f"{path}: config file not found"]) from None
        return {}
    except PermissionError:
        raise SettingsError([f"{path}: permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{path}: not valid TOML: {exc}"]) from None


def _read_secrets(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if required:
            raise SettingsError([f"{path}: secrets file not found"]) from None
        return {}
    except PermissionError:
        raise SettingsError([f"{path}: permission denied"]) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError([f"{path}: secrets file must be mode 0600 (it is {stat.S_IMODE(mode):04o})"])
    return _read_toml(path, required=True)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _leaf_paths(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _leaf_paths(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, annotation) of every leaf setting."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", annotation


def secret_paths(model: type[BaseModel]) -> set[str]:
    return {path for path, ann in _fields(model) if ann is SecretStr or SecretStr in get_args(ann)}
