"""A password never sits in a URL or host setting: appliance.toml is readable by the service's group and shown by
`appliance config show`; a URL with credentials in it is refused with one line that names the field and never
repeats the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import SettingsError
from appliance.settings import load

PASSWORD = "hunter2-do-not-print"


@pytest.mark.parametrize(
    ("toml", "field", "secret"),
    [
        (f'[livekit]\nurl = "wss://user:{PASSWORD}@lk.example.com"\n', "livekit.url", "livekit.api_secret"),
        (f'[livekit]\nurl = "wss://{PASSWORD}@lk.example.com/rtc"\n', "livekit.url", "livekit.api_secret"),
        (
            f'[models]\nopenai_base_url = "https://me:{PASSWORD}@llm.internal/v1"\n',
            "models.openai_base_url",
            "models.openai_api_key",
        ),
        (
            f'[models]\nopenai_base_url = "https://llm.internal/v1?password={PASSWORD}"\n',
            "models.openai_base_url",
            "models.openai_api_key",
        ),
        (f'[redis]\nhost = "redis://default:{PASSWORD}@10.0.0.5:6379"\n', "redis.host", "redis.password"),
        (f'[postgres]\nhost = "postgresql://app:{PASSWORD}@db/appliance"\n', "postgres.host", "postgres.password"),
        (f'[postgres]\nhost = "host=db password={PASSWORD}"\n', "postgres.host", "postgres.password"),
    ],
    ids=["livekit-userinfo", "livekit-user", "openai-userinfo", "openai-query", "redis-url", "pg-url", "pg-dsn"],
)
def test_a_password_in_a_url_is_refused_naming_the_field(tmp_path: Path, toml: str, field: str, secret: str) -> None:
    (tmp_path / "appliance.toml").write_text(toml)
    with pytest.raises(SettingsError) as excinfo:
        load()
    assert len(excinfo.value.errors) == 1
    (line,) = excinfo.value.errors
    assert line.startswith(f"{field}: ") and "put the password in secrets.toml" in line and secret in line, line
    assert PASSWORD not in str(excinfo.value)


@pytest.mark.parametrize(
    "toml",
    [
        '[livekit]\nurl = "wss://lk.example.com"\n',
        '[livekit]\nurl = "ws://127.0.0.1:7880/path@v1"\n',  # an @ after the host is part of the path
        '[models]\nopenai_base_url = "http://127.0.0.1:8000/v1"\n',
        '[redis]\nhost = "10.0.0.5"\n[postgres]\nhost = "/run/postgresql"\n',
    ],
)
def test_urls_and_hosts_without_credentials_load(tmp_path: Path, toml: str) -> None:
    (tmp_path / "appliance.toml").write_text(toml)
    load()
