"""``appliance config show|validate`` and the root group's error handling, through click's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from appliance.cli import App, main
from appliance.cli.config import effective
from appliance.errors import ApplianceError
from appliance.settings import load

SECRET = "hunter2-do-not-print"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def write_secrets(tmp_path: Path, text: str) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text(text)
    path.chmod(0o600)


def test_help_works() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "config" in result.output and "db" in result.output


def test_help_does_not_import_the_heavy_libraries() -> None:
    code = "import sys, appliance.cli; print(sorted({'psycopg', 'redis', 'pydantic'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_effective_masks_secrets_and_keeps_unset_ones_null(tmp_path: Path) -> None:
    write_secrets(tmp_path, f'[postgres]\npassword = "{SECRET}"\n')
    data = effective(load())
    assert data["postgres"]["password"] == "**********"
    assert data["redis"]["password"] is None
    assert data["control"]["run_dir"] == "/run/appliance"


def test_show_prints_toml_without_secrets(tmp_path: Path) -> None:
    write_secrets(tmp_path, f'[postgres]\npassword = "{SECRET}"\n[livekit]\napi_secret = "{SECRET}"\n')
    result = run("config", "show")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert 'password = "**********"' in result.stdout
    assert "# password is unset" in result.stdout  # redis has none
    assert result.stdout.startswith("[redis]\n")
    # The human form parses as TOML (unset values are comments), so it can seed a config file.
    shown = tomllib.loads(result.stdout)
    assert shown["postgres"]["port"] == 5532
    assert shown["control"]["data_dir"] == "/var/lib/appliance"


def test_show_json_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_REDIS__PASSWORD", SECRET)
    result = run("config", "show", "--json")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    data = json.loads(result.stdout)
    assert data["redis"]["password"] == "**********"
    assert data["postgres"]["password"] is None


def test_validate_ok_goes_to_stderr(tmp_path: Path) -> None:
    result = run("config", "validate")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == f"ok: {tmp_path / 'appliance.toml'}\n"


def test_validate_prints_one_line_per_error(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").write_text(f'[redis]\nport = 0\nprot = 1\n[postgres]\npassword = "{SECRET}"\n')
    result = run("config", "validate")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1  # the secret check runs before validation, and alone
    assert lines[0].startswith("error: postgres.password: secrets are not allowed in appliance.toml")
    assert SECRET not in result.output

    (tmp_path / "appliance.toml").write_text("[redis]\nport = 0\nprot = 1\n")
    result = run("config", "validate")
    assert result.exit_code == 1
    assert sorted(result.stderr.splitlines()) == [
        "error: redis.port: Input should be greater than or equal to 1",
        "error: redis.prot: unknown setting (check the spelling)",
    ]


def test_validate_never_prints_a_secret_given_as_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_REDIS__PORT", SECRET)
    result = run("config", "validate")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: redis.port: ")
    assert SECRET not in result.output


def _fails(exc: Exception) -> click.Command:
    @click.command("fails")
    @click.pass_obj
    def fails(app: App) -> None:
        raise exc

    return fails


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registers a ``fails`` command for the duration of one test."""
    monkeypatch.setitem(main.commands, "fails", _fails(ApplianceError("worker.max_rooms: set it to 1 or more")))


def test_a_user_error_is_one_line(failing: None) -> None:
    result = run("fails")
    assert result.exit_code == 1
    assert result.stderr == "error: worker.max_rooms: set it to 1 or more\n"


def test_a_user_error_under_verbose_shows_the_traceback_too(failing: None) -> None:
    result = run("-v", "fails")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.endswith("error: worker.max_rooms: set it to 1 or more\n")


def test_a_bug_is_one_line_without_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(main.commands, "fails", _fails(KeyError("oops")))
    result = run("fails")
    assert result.exit_code == 70
    assert result.stderr == "error: unexpected KeyError: this is a bug; rerun with -v for the traceback\n"

    result = run("-v", "fails")
    assert result.exit_code == 70
    assert "Traceback" in result.stderr and "KeyError: 'oops'" in result.stderr
