"""The full settings of the appliance: the data plane's sections plus the control plane's own."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from agent.settings import AgentSettings, Section, load_settings, no_credentials


class ControlSettings(Section):
    """Who runs the appliance, what this box runs, and where its files live."""

    # The unprivileged user every program runs as (supervisord too, under systemd).
    user: str = Field("appliance", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    # "all": Redis, PostgreSQL, (LiveKit,) flusher and worker on this box; "worker": flusher and worker only,
    # pointed at a shared Redis, PostgreSQL and LiveKit (several boxes, one cluster).
    role: Literal["all", "worker"] = "all"
    data_dir: Path = Path("/var/lib/appliance")
    log_dir: Path = Path("/var/log/appliance")
    run_dir: Path = Path("/run/appliance")
    unit_dir: Path = Path("/etc/systemd/system")
    # The second worker a graceful restart starts before the first one drains: its own loopback ports.
    alt_health_port: int = Field(8083, ge=1, le=65535)
    alt_status_port: int = Field(8084, ge=1, le=65535)


class MetricsSettings(Section):
    """The exporter (Prometheus text format, /metrics) and the health endpoint (/health), one program."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(9464, ge=1, le=65535)
    # The health endpoint's own address, so that a load balancer or a Kubernetes probe can be given another.
    health_bind: str = "127.0.0.1"
    health_port: int = Field(8085, ge=1, le=65535)
    # Room names as labels of the per-room series: off by default, since a room name can be personal.
    room_names: bool = False
    # Required of scrapers (Authorization: Bearer ...) when set; needed when bind is not loopback.
    token: SecretStr | None = None
    # A Prometheus of the appliance's own (Debian's package, one more supervised program, on loopback) scraping
    # the exporter and evaluating the shipped alert rules; its data lives in <data_dir>/prometheus.
    prometheus: bool = False
    prometheus_port: int = Field(9090, ge=1, le=65535)
    scrape_interval_s: int = Field(15, ge=1, le=300)
    # How long and how much it keeps (Prometheus's --storage.tsdb.retention.time and .size): whichever ends first.
    retention: str = Field("15d", pattern=r"^[1-9][0-9]*(h|d|w|y)$")
    retention_size: str = Field("2GB", pattern=r"^[1-9][0-9]*(MB|GB|TB)$")

    @field_validator("bind", "health_bind")
    @classmethod
    def _address(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Self:
        if not ipaddress.ip_address(self.bind).is_loopback and self.token is None:
            raise ValueError("metrics.bind beyond loopback needs metrics.token in secrets.toml (scrapers send it)")
        return self


class LiveKitServerSettings(Section):
    """The bundled single-node livekit-server, run when role is "all" and no external LiveKit is configured."""

    enabled: bool = True
    bin: Path = Path("/opt/appliance/bin/livekit-server")
    # Signalling (HTTP/WebSocket) and WebRTC ports: the only ones that face clients (all others are loopback).
    port: int = Field(7880, ge=1, le=65535)
    rtc_tcp_port: int = Field(7881, ge=0, le=65535)
    rtc_udp_port: int = Field(7882, ge=1, le=65535)
    # The address clients reach this box at; empty: livekit-server picks this box's first address.
    node_ip: str = ""
    # The public name TLS is terminated for (see README); informational for the summary and the token command.
    domain: str = ""
    # Everything on 127.0.0.1, ICE on loopback, no STUN: for tests and trials on one box.
    loopback_only: bool = False
    # livekit-server's own log level; "debug" logs every ICE candidate signalled (what a connection problem needs).
    log_level: Literal["debug", "info", "warn", "error"] = "info"

    @field_validator("node_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        if value:
            ipaddress.ip_address(value)
        return value


class ConsoleSettings(Section):
    """The web console (the program "console"): a page to talk to the agent by text and voice, from a browser."""

    enabled: bool = True
    # Loopback by default; another address (or a TLS proxy in front, see README) lets others in, each with the
    # operator's password (console.password_hash, `appliance console passwd`) or a link (`appliance console link`).
    bind: str = "127.0.0.1"
    port: int = Field(8090, ge=1, le=65535)
    # The LiveKit URL the browser connects to; empty: livekit.url (right on the box itself; behind a TLS proxy,
    # the public wss:// URL).
    livekit_url: str = ""
    # The console's address as browsers reach it, for the links `appliance console link` prints; empty:
    # http://<bind>:<port>.
    public_url: str = ""
    session_ttl_s: int = Field(43_200, ge=60)  # how long a login (or a used link) lasts
    link_ttl_s: int = Field(900, ge=10)  # how long an unused link stays valid, unless `console link --ttl` says
    token_ttl_s: int = Field(600, ge=10)  # the LiveKit join tokens the page gets
    # Where install puts livekit-client's browser bundle (checked against config/livekit-client.lock).
    assets_dir: Path = Path("/opt/appliance/console")
    password_hash: SecretStr | None = None  # scrypt, from `appliance console passwd`; None: links only
    secret_key: SecretStr | None = None  # signs sessions and links; made by install

    @field_validator("bind")
    @classmethod
    def _address(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("livekit_url", "public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return no_credentials(value, "console.password_hash")


class ApplianceSettings(AgentSettings):
    """Everything the control plane reads: the data plane's sections, validated too, and its own."""

    control: ControlSettings = ControlSettings()
    livekit_server: LiveKitServerSettings = LiveKitServerSettings()
    metrics: MetricsSettings = MetricsSettings()
    console: ConsoleSettings = ConsoleSettings()

    @model_validator(mode="after")
    def _bundled_livekit_is_for_role_all(self) -> Self:
        if self.control.role == "worker" and self.livekit_server.enabled:
            raise ValueError("livekit_server.enabled: a worker-role box uses a shared LiveKit; set it to false")
        return self

    @property
    def bundles_livekit(self) -> bool:
        return self.control.role == "all" and self.livekit_server.enabled

    @property
    def runs_stores(self) -> bool:
        """Whether Redis and PostgreSQL run on this box (role "all") or are shared ones elsewhere."""
        return self.control.role == "all"


def load() -> ApplianceSettings:
    """Load from the config file, the secrets file and the environment, or raise SettingsError. On a box with its
    own Redis, the control plane connects as its ACL user there (agent/store/acl.py)."""
    settings = load_settings(ApplianceSettings)
    if settings.runs_stores and settings.redis.acl_user is None:
        settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"acl_user": "cli"})})
    return settings
