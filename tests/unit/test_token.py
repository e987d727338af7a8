"""``appliance token``: a join token LiveKit accepts for that room and identity, and no secret printed."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner
from livekit import api

from agent.settings import LiveKitSettings
from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.tokens import join_token, parse_ttl

KEY = "APIkey123"
SECRET = "s3cret-that-must-never-be-printed-0123456789"


def write_secrets(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'[livekit]\napi_key = "{KEY}"\napi_secret = "{SECRET}"\n')
    secrets.chmod(0o600)


def test_the_token_decodes_with_the_room_and_identity_and_no_secret_is_printed(tmp_path: Path) -> None:
    write_secrets(tmp_path)

    result = CliRunner().invoke(main, ["token", "support-42", "alice", "--ttl", "15m", "--name", "Alice"])

    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "\n" not in token  # stdout is the token alone, for scripts
    claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert claims.identity == "alice"
    assert claims.name == "Alice"
    assert claims.video is not None
    assert claims.video.room == "support-42"
    assert claims.video.room_join
    assert SECRET not in result.output
    assert "valid until" in result.stderr


def test_json_gives_the_expiry_the_ttl_asked_for(tmp_path: Path) -> None:
    write_secrets(tmp_path)

    result = CliRunner().invoke(main, ["token", "r", "bob", "--ttl", "2h", "--json"])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["room"] == "r"
    assert data["identity"] == "bob"
    assert abs(data["expires_at"] - (time.time() + 7200)) < 60
    assert api.TokenVerifier(KEY, SECRET).verify(data["token"]).identity == "bob"
    assert SECRET not in result.output


def test_a_token_signed_with_another_secret_is_refused() -> None:
    made = join_token(LiveKitSettings(api_key=KEY, api_secret=SECRET), "r", "eve")
    with pytest.raises(jwt.InvalidSignatureError):
        api.TokenVerifier(KEY, "another-secret-of-sufficient-length-000").verify(made.token)


def test_unset_key_and_secret_is_one_line_naming_them() -> None:
    result = CliRunner().invoke(main, ["token", "room", "alice"])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: livekit.api_key and livekit.api_secret are not set")
    assert result.stderr.count("\n") == 1


def test_a_bad_ttl_is_one_line(tmp_path: Path) -> None:
    write_secrets(tmp_path)

    result = CliRunner().invoke(main, ["token", "room", "alice", "--ttl", "soon"])

    assert result.exit_code == 1
    assert result.stderr.startswith("error: --ttl 'soon': not a duration")
    assert SECRET not in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90", timedelta(seconds=90)), ("15m", timedelta(minutes=15)), ("6h", timedelta(hours=6)), ("7d", timedelta(7))],
)
def test_parse_ttl(text: str, expected: timedelta) -> None:
    assert parse_ttl(text) == expected


@pytest.mark.parametrize("text", ["0", "31d", "-5m", "1w", ""])
def test_parse_ttl_refuses(text: str) -> None:
    with pytest.raises(ApplianceError):
        parse_ttl(text)


def test_an_empty_identity_is_refused() -> None:
    result = CliRunner().invoke(main, ["token", "room", ""])

    assert result.exit_code == 1
    assert result.stderr == "error: identity: must not be empty\n"
