"""`appliance agent env`: values into the right file, refused ones change nothing, secrets listed masked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance import agent_env
from appliance.errors import ApplianceError
from appliance.layout import Layout
from appliance.settings import load

KEY = "sk-unit-do-not-print"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    config, secrets = tmp_path / "appliance.toml", tmp_path / "secrets.toml"
    config.write_text("[worker]\nmax_rooms = 3\n")
    config.chmod(0o640)
    secrets.write_text('[redis]\npassword = "r"\n')
    secrets.chmod(0o600)
    return config, secrets


def layout() -> Layout:
    return Layout.of(load())


def test_a_secret_goes_to_the_secrets_file_and_is_listed_masked(files: tuple[Path, Path]) -> None:
    config, secrets = files
    agent_env.set_value(load(), layout(), "OPENAI_API_KEY", KEY, secret=True)
    agent_env.set_value(load(), layout(), "AGENT_STT", "deepgram", secret=False)
    assert KEY in secrets.read_text() and KEY not in config.read_text()
    assert (secrets.stat().st_mode & 0o777, config.stat().st_mode & 0o777) == (0o600, 0o640)
    assert "max_rooms = 3" in config.read_text() and 'password = "r"' in secrets.read_text()  # the rest kept
    settings = load()
    assert settings.agent.environ() == {"OPENAI_API_KEY": KEY, "AGENT_STT": "deepgram"}
    assert agent_env.listing(settings) == {
        "env": {"AGENT_STT": "deepgram"},
        "secret_env": {"OPENAI_API_KEY": "**********"},
    }
    agent_env.unset(settings, layout(), "OPENAI_API_KEY")
    assert load().agent.environ() == {"AGENT_STT": "deepgram"}


@pytest.mark.parametrize(
    ("name", "value", "secret", "error"),
    [
        ("PATH", "/tmp", True, "agent.env.PATH: reserved"),
        ("APPLIANCE_REDIS__PORT", "1", False, "agent.env.APPLIANCE_REDIS__PORT: reserved"),
        ("A B", "x", True, "not an environment variable name"),
        ("EMPTY", "", True, "agent.env.EMPTY: no value on standard input"),
        ("AGENT_STT", "openai", True, "agent.env.AGENT_STT: already set in appliance.toml"),
    ],
)
def test_a_refused_value_changes_nothing(
    files: tuple[Path, Path], name: str, value: str, secret: bool, error: str
) -> None:
    agent_env.set_value(load(), layout(), "AGENT_STT", "deepgram", secret=False)
    before = [p.read_bytes() for p in files]
    with pytest.raises(ApplianceError, match=re.escape(error)):
        agent_env.set_value(load(), layout(), name, value, secret=secret)
    assert [p.read_bytes() for p in files] == before


def test_unsetting_what_is_not_set_says_so(files: tuple[Path, Path]) -> None:
    with pytest.raises(ApplianceError, match=re.escape("agent.env.NOPE: not set")):
        agent_env.unset(load(), layout(), "NOPE")
