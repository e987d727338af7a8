"""A whole appliance installed by `appliance install` into a temporary prefix and run under a real supervisord.

Its appliance.toml puts every path under the prefix and every port on a free one; the bundled livekit-server
is loopback-only. The service user is the real `appliance` user (PostgreSQL refuses to run as root), so the
programs run from a venv that user can read: Debian's python3 and this checkout installed into SERVICE_VENV,
as install.sh does (the developer's .venv may sit under /root, which the service user cannot enter).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
from livekit import rtc
from livekit.api import AccessToken, VideoGrants

from agent.settings import load_settings
from appliance.chatclient import ChatClient
from appliance.layout import Layout
from appliance.settings import ApplianceSettings
from appliance.supervisor import Supervisor
from harness.fake_openai import FakeOpenAI
from harness.livekit import binary, free_udp_port
from harness.servers import free_port

REPO = Path(__file__).parents[1]
EXAMPLES = REPO / "examples"  # the example agent projects
SERVICE_VENV = Path(os.environ.get("APPLIANCE_SERVICE_VENV", "/var/tmp/appliance-test-venv"))
# The example agents' wheels beyond the appliance's (harness/wheelhouse.txt), downloaded by scripts/test.
WHEELHOUSE = Path(os.environ.get("APPLIANCE_WHEELHOUSE", "/var/tmp/appliance-test-wheelhouse"))
# livekit-client's npm tarball for the console (config/livekit-client.lock), downloaded by scripts/test: every
# install the tests make passes it (--livekit-client-tgz), offline.
LIVEKIT_CLIENT_TGZ = Path(os.environ.get("APPLIANCE_TEST_DOWNLOADS", "/var/tmp/appliance-test-downloads")) / (
    "livekit-client.tgz"
)
_venv_ready = False


def service_venv() -> Path:
    """The venv the installed appliance runs from (scripts/test makes it and installs the dependencies while
    PyPI is reachable); this checkout's code is reinstalled into it once per session, offline."""
    global _venv_ready
    if not _venv_ready:
        python = SERVICE_VENV / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"{SERVICE_VENV} missing: run the tests through scripts/test, which makes it")
        install_code(REPO)
        _venv_ready = True
    return SERVICE_VENV


def install_code(source: Path) -> None:
    """Put the code of the checkout at ``source`` into the service venv (offline: dependencies are there)."""
    python = SERVICE_VENV / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--force-reinstall", str(source)],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip


class InstalledAppliance:
    def __init__(self, *, drain_timeout_s: int = 10, extra: str = "") -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="appliance-prefix-"))
        self.prefix.chmod(0o755)
        self.etc = self.prefix / "etc" / "appliance"
        self.config_file = self.etc / "appliance.toml"
        self.drain_timeout_s = drain_timeout_s
        self.extra = extra

    def config_text(self) -> str:
        p = self.prefix
        udp = free_udp_port()
        return f"""\
[redis]
port = {free_port()}
[postgres]
port = {free_port()}
[store]
spool_dir = "{p}/var/lib/appliance/spool"
[worker]
health_port = {free_port()}
status_port = {free_port()}
drain_timeout_s = {self.drain_timeout_s}
departure_timeout_s = 5
num_idle_processes = 1
reconcile_every_s = 1
orphan_after_s = 2
dispatch_grace_s = 15
[control]
data_dir = "{p}/var/lib/appliance"
log_dir = "{p}/var/log/appliance"
run_dir = "{p}/run/appliance"
unit_dir = "{p}/etc/systemd/system"
alt_health_port = {free_port()}
alt_status_port = {free_port()}
[metrics]
port = {free_port()}
health_port = {free_port()}
prometheus = true
prometheus_port = {free_port()}
scrape_interval_s = 1
[console]
port = {free_port()}
assets_dir = "{p}/opt/appliance/console"
[livekit_server]
bin = "{p}/opt/appliance/bin/livekit-server"
port = {free_port()}
rtc_udp_port = {udp}
loopback_only = true
{self.extra}"""

    @property
    def venv(self) -> Path:
        return service_venv()

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        env["APPLIANCE_CONFIG"] = str(self.config_file)
        return env

    def write_config(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        text = self.config_text()
        # [livekit] url follows the bundled server's port.
        port = next(
            line.split("=")[1].strip()
            for line in text.split("[livekit_server]")[1].splitlines()
            if line.startswith("port")
        )
        self.config_file.write_text(text + f'[livekit]\nurl = "ws://127.0.0.1:{port}"\n')

    def use_models(self, fake: FakeOpenAI, **choices: str) -> None:
        """The box's [models] served by ``fake``: its LLM and what ``choices`` name (e.g. ``tts="openai"``), in
        the config (written again) and its key in secrets.toml. Before ``install``."""
        models = {"llm": "openai", **choices, "openai_base_url": fake.base_url}
        self.extra += "[models]\n" + "".join(f'{key} = "{value}"\n' for key, value in models.items())
        self.write_config()
        secrets = self.etc / "secrets.toml"
        secrets.write_text(f'[models]\nopenai_api_key = "{fake.api_key}"\n')
        secrets.chmod(0o600)

    def install(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("install", "--yes", "--livekit-server-bin", str(binary()), "--livekit-client-tgz",
                        str(LIVEKIT_CLIENT_TGZ), *args, check=check, timeout=400)  # fmt: skip

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The CLI as an operator runs it; ``stdin``: what it reads (a secret's value)."""
        result = subprocess.run(
            [str(service_venv() / "bin" / "appliance"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"appliance {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    @property
    def settings(self) -> ApplianceSettings:
        return load_settings(ApplianceSettings, config_file=self.config_file)

    @property
    def layout(self) -> Layout:
        return Layout.of(self.settings, self.config_file)

    def supervisor(self) -> Supervisor:
        return Supervisor(self.layout.supervisor_socket)

    def chat_client(self, room: str, identity: str) -> ChatClient:
        """A participant for ``room`` (not yet connected), with a token from the appliance's own keys."""
        settings = self.settings
        key, secret = settings.livekit.api_key, settings.livekit.api_secret
        assert key is not None and secret is not None
        grants = VideoGrants(room_join=True, room=room)
        token = AccessToken(key.get_secret_value(), secret.get_secret_value()).with_identity(identity)
        return ChatClient(settings.livekit.url, token.with_grants(grants).to_jwt(), self.room_options())

    def room_options(self) -> rtc.RoomOptions:
        """The loopback-only LiveKit tells clients of a STUN server on a loopback port nobody serves."""
        stun = rtc.IceServer(urls=[f"stun:127.0.0.1:{self.settings.livekit_server.rtc_udp_port + 1}"])
        return rtc.RoomOptions(rtc_config=rtc.RtcConfiguration(ice_servers=[stun]), connect_timeout=10)

    def pid(self, program: str) -> int:
        return self.supervisor().process(program).pid

    def close(self) -> None:
        """Stop everything of ours under the prefix, whatever state it is in, and remove the prefix."""
        sup = Supervisor(self.prefix / "run" / "appliance" / "supervisord.sock")
        if sup.answers():
            try:
                supervisord = sup.supervisord_pid()
                sup.shutdown()
                sup.wait_gone(120)
                psutil.Process(supervisord).wait(30)
            except psutil.Error:
                pass
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.prefix) in part for part in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(self.prefix, ignore_errors=True)
