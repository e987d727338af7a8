"""Loading the settings: source order, where secrets may live, and errors that name the field."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel, SecretStr

from agent.settings import CONTROL_SECTIONS, AgentSettings, PostgresSettings, SettingsError, load_settings
from appliance.masking import secret_values
from appliance.settings import ApplianceSettings, ControlSettings, load

DEFAULT_TOML = Path(__file__).parents[2] / "config" / "appliance.toml"
SECRET = "hunter2-do-not-print"


def write_config(tmp_path: Path, text: str) -> None:
    (tmp_path / "appliance.toml").write_text(text)


def write_secrets(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secrets.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def errors_of(excinfo: pytest.ExceptionInfo[SettingsError]) -> list[str]:
    return excinfo.value.errors


def test_toml_values_are_loaded(tmp_path: Path) -> None:
    write_config(tmp_path, '[redis]\nport = 7000\n[control]\ndata_dir = "/srv/appliance"\n')
    settings = load()
    assert settings.redis.port == 7000
    assert settings.control.data_dir == Path("/srv/appliance")
    assert settings.postgres.port == 5532  # untouched sections keep their defaults


def test_environment_beats_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, '[redis]\nport = 7000\nhost = "10.0.0.1"\n[control]\ndata_dir = "/srv/a"\n')
    monkeypatch.setenv("APPLIANCE_REDIS__PORT", "7001")
    monkeypatch.setenv("APPLIANCE_CONTROL__DATA_DIR", "/srv/b")
    settings = load()
    assert settings.redis.port == 7001
    assert settings.redis.host == "10.0.0.1"  # the environment overrides a key, not its whole section
    assert settings.control.data_dir == Path("/srv/b")


def test_secrets_file_joins_the_toml_section_and_the_environment_beats_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, '[postgres]\nhost = "db.internal"\n')
    write_secrets(tmp_path, f'[postgres]\npassword = "{SECRET}"\n')
    settings = load()
    assert settings.postgres.host == "db.internal"
    assert settings.postgres.password is not None
    assert settings.postgres.password.get_secret_value() == SECRET

    monkeypatch.setenv("APPLIANCE_POSTGRES__PASSWORD", "from-env")
    settings = load()
    assert settings.postgres.password is not None
    assert settings.postgres.password.get_secret_value() == "from-env"


def test_secrets_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = elsewhere / "creds.toml"
    path.write_text(f'[redis]\npassword = "{SECRET}"\n')
    path.chmod(0o600)
    monkeypatch.setenv("APPLIANCE_SECRETS", str(path))
    password = load().redis.password
    assert password is not None and password.get_secret_value() == SECRET


def test_a_named_secrets_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_SECRETS", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError) as excinfo:
        load()
    assert errors_of(excinfo) == [f"{tmp_path / 'missing.toml'}: secrets file not found"]


def test_a_secret_in_the_toml_is_an_error_naming_the_field(tmp_path: Path) -> None:
    write_config(tmp_path, f'[livekit]\napi_secret = "{SECRET}"\n')
    with pytest.raises(SettingsError) as excinfo:
        load()
    [error] = errors_of(excinfo)
    assert error.startswith("livekit.api_secret: secrets are not allowed in appliance.toml")
    assert "APPLIANCE_LIVEKIT__API_SECRET" in error
    assert SECRET not in error


def test_a_secrets_file_readable_by_others_is_an_error(tmp_path: Path) -> None:
    write_secrets(tmp_path, f'[postgres]\npassword = "{SECRET}"\n', mode=0o644)
    with pytest.raises(SettingsError) as excinfo:
        load()
    [error] = errors_of(excinfo)
    assert "must be mode 0600 (it is 0644)" in error
    assert SECRET not in error


def test_a_non_secret_in_the_secrets_file_is_an_error_naming_the_field(tmp_path: Path) -> None:
    write_secrets(tmp_path, "[redis]\nport = 7000\n")
    with pytest.raises(SettingsError) as excinfo:
        load()
    assert errors_of(excinfo) == ["redis.port: secrets.toml holds only secrets; put this setting in appliance.toml"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[redis]\nprot = 7000\n", "redis.prot: unknown setting (check the spelling)"),
        ("[rediss]\nport = 7000\n", "rediss: unknown setting (check the spelling)"),
        ('[control]\ndata_dri = "/x"\n', "control.data_dri: unknown setting (check the spelling)"),
    ],
)
def test_a_typo_names_the_field(tmp_path: Path, text: str, expected: str) -> None:
    write_config(tmp_path, text)
    with pytest.raises(SettingsError) as excinfo:
        load()
    assert errors_of(excinfo) == [expected]


def test_an_invalid_value_names_the_field(tmp_path: Path) -> None:
    write_config(
        tmp_path, '[redis]\nport = 70000\n[store]\nkey_prefix = "has space"\n[worker]\nhealth_bind = "localhost"\n'
    )
    with pytest.raises(SettingsError) as excinfo:
        load()
    fields = sorted(error.split(":", 1)[0] for error in errors_of(excinfo))
    assert fields == ["redis.port", "store.key_prefix", "worker.health_bind"]


def test_an_invalid_environment_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_POSTGRES__PORT", "not-a-port")
    with pytest.raises(SettingsError) as excinfo:
        load()
    assert [error.split(":", 1)[0] for error in errors_of(excinfo)] == ["postgres.port"]


def test_control_belongs_to_the_appliance_and_the_data_plane_ignores_it(tmp_path: Path) -> None:
    write_config(tmp_path, '[control]\nrun_dir = "/tmp/run"\n[redis]\nport = 7000\n')
    assert load().control.run_dir == Path("/tmp/run")
    agent = load_settings(AgentSettings)
    assert agent.redis.port == 7000
    assert not hasattr(agent, "control")
    # Every section of the control plane's own is one the data plane leaves alone (the default config has them all).
    assert set(CONTROL_SECTIONS) == set(ApplianceSettings.model_fields) - set(AgentSettings.model_fields)
    write_config(tmp_path, DEFAULT_TOML.read_text())
    assert load_settings(AgentSettings).redis.port == ApplianceSettings().redis.port


def test_the_default_config_file_holds_the_model_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_CONFIG", str(DEFAULT_TOML))
    defaults = ApplianceSettings()
    # The box runs its own Redis, where the control plane is its own ACL user.
    assert load() == defaults.model_copy(update={"redis": defaults.redis.model_copy(update={"acl_user": "cli"})})
    assert ApplianceSettings().control == ControlSettings()


def test_the_default_config_file_lists_every_setting_but_secrets() -> None:
    """So a new setting cannot be added without its line and comment; unset ones appear commented out."""
    text = DEFAULT_TOML.read_text()
    listed = set(_leaves(tomllib.loads(text)))
    expected = {path for path, default, secret in _fields(ApplianceSettings) if not secret and default is not None}
    assert listed == expected
    for path, default, secret in _fields(ApplianceSettings):
        if not secret and default is None:
            assert f"# {path.rsplit('.', 1)[1]} = " in text, f"{path} should appear commented out"


def _leaves(table: dict[str, object], prefix: str = "") -> Iterator[str]:
    for key, value in table.items():
        if isinstance(value, dict) and value:  # an empty table is a setting of its own ([agent.env])
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, object, bool]]:
    """(dotted path, default, is secret) of every leaf setting."""
    for name, field in model.model_fields.items():
        if isinstance(field.default, BaseModel):
            yield from _fields(type(field.default), f"{prefix}{name}.")
        else:
            secret = field.annotation is SecretStr or SecretStr in get_args(field.annotation)
            yield f"{prefix}{name}", field.default, secret


def test_unparseable_section_from_the_environment_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPLIANCE_REDIS", "notjson")
    with pytest.raises(SettingsError) as info:
        load_settings(AgentSettings)
    assert info.value.errors[0].startswith("environment:")


def test_pool_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="pool_min must not exceed pool_max"):
        PostgresSettings(pool_min=5, pool_max=2)


def test_typo_in_the_secrets_file_is_an_unknown_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[postgress]\npassword = "x"\n')
    secrets.chmod(0o600)
    monkeypatch.setenv("APPLIANCE_SECRETS", str(secrets))
    with pytest.raises(SettingsError) as info:
        load_settings(AgentSettings)
    assert info.value.errors == ["postgress.password: unknown setting (check the spelling)"]


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ('[redis]\ntls = true\nunix_socket = "/run/r.sock"\n', "redis.tls: TLS is for host and port, not"),
        ('[redis]\ntls = true\ntls_cert_file = "/etc/c.pem"\n', "redis.tls_cert_file and redis.tls_key_file go"),
        ('[postgres]\nsslmode = "verify"\n', "postgres.sslmode: "),
    ],
)
def test_tls_settings_that_cannot_work_are_one_line_errors(tmp_path: Path, config: str, error: str) -> None:
    write_config(tmp_path, config)
    with pytest.raises(SettingsError) as excinfo:
        load()
    [found] = errors_of(excinfo)
    assert found.startswith(error), found


def test_the_tls_settings_reach_the_clients() -> None:
    from agent.settings import PostgresSettings, RedisSettings
    from agent.store.redis_tier import connection_kwargs

    kwargs = connection_kwargs(RedisSettings(host="redis.internal", tls=True, tls_ca_file=Path("/ca.pem")), 1.0)
    assert (kwargs["ssl"], kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == (True, "required", True)
    assert kwargs["ssl_ca_certs"] == "/ca.pem" and "ssl" not in connection_kwargs(RedisSettings(), 1.0)
    conninfo = PostgresSettings(host="pg.internal", sslmode="verify-full", sslrootcert=Path("/ca.pem")).conninfo()
    assert "sslmode=verify-full" in conninfo and "sslrootcert=/ca.pem" in conninfo


def test_agent_env_plain_in_the_config_secret_in_the_secrets_file(tmp_path: Path) -> None:
    write_config(tmp_path, '[agent.env]\nLLM_PROVIDER = "openai"\n')
    write_secrets(tmp_path, f'[agent.env]\nOPENAI_API_KEY = "{SECRET}"\n')
    agent = load().agent
    assert agent.env == {"LLM_PROVIDER": "openai"}
    assert agent.environ() == {"LLM_PROVIDER": "openai", "OPENAI_API_KEY": SECRET}
    assert SECRET not in repr(agent) and SECRET not in agent.model_dump_json()
    assert SECRET in secret_values(load())  # what status, doctor and logs mask


@pytest.mark.parametrize(
    ("config", "secrets", "error"),
    [
        ('[agent.env]\nAPPLIANCE_REDIS__PORT = "1"\n', "", "agent.env.APPLIANCE_REDIS__PORT: reserved"),
        ('[agent.env]\nLD_PRELOAD = "x.so"\n', "", "agent.env.LD_PRELOAD: reserved"),
        ('[agent.env]\nPYTHONPATH = "/tmp"\n', "", "agent.env.PYTHONPATH: reserved"),
        ("", '[agent.env]\nPATH = "/tmp"\n', "agent.env.PATH: reserved"),
        ('[agent.env]\n"A-B" = "x"\n', "", "agent.env.A-B: not an environment variable name"),
        ('[agent.env]\nKEY = "x"\n', '[agent.env]\nKEY = "y"\n', "agent.env.KEY: set in both"),
        ('[agent.secret_env]\nKEY = "x"\n', "", "agent.secret_env: unknown setting"),
    ],
)
def test_agent_env_names_are_checked(tmp_path: Path, config: str, secrets: str, error: str) -> None:
    write_config(tmp_path, config)
    write_secrets(tmp_path, secrets)
    with pytest.raises(SettingsError) as excinfo:
        load()
    assert len(errors_of(excinfo)) == 1 and errors_of(excinfo)[0].startswith(error), errors_of(excinfo)


def test_the_data_plane_leaves_the_control_planes_secrets_alone(tmp_path: Path) -> None:
    write_secrets(tmp_path, '[console]\nsecret_key = "k"\n[metrics]\ntoken = "t"\n[redis]\npassword = "r"\n')
    agent = load_settings(AgentSettings)
    assert agent.redis.password is not None and not hasattr(agent, "console")
    assert load().console.secret_key is not None
