"""``appliance install``'s options: the LiveKit API secret comes from a file or standard input, never from argv,
and a bad one is a usage error naming the option before anything is touched."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from appliance.cli import main

EXTERNAL = ["install", "--yes", "--livekit-url", "ws://127.0.0.1:1", "--livekit-api-key", "APIkey"]


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def test_the_secret_has_no_command_line_form() -> None:
    help_text = run("install", "--help").output
    assert "--livekit-api-secret-file" in help_text
    assert "--livekit-api-secret " not in help_text
    refused = run(*EXTERNAL, "--livekit-api-secret", "s3cret")
    assert refused.exit_code == 2 and "No such option '--livekit-api-secret'" in refused.output, refused.output


def test_an_empty_secret_file_is_an_error_naming_the_option(tmp_path: Path) -> None:
    empty = tmp_path / "secret"
    empty.write_text("\n")  # only the trailing newline, which is dropped
    for result in (run(*EXTERNAL, "--livekit-api-secret-file", str(empty)),
                   run(*EXTERNAL, "--livekit-api-secret-file", "-", stdin="")):  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "Invalid value for --livekit-api-secret-file" in result.output, result.output
        assert "is empty" in result.output


def test_the_secret_file_goes_with_an_external_livekit(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    alone = run("install", "--yes", "--livekit-api-secret-file", str(secret))
    assert alone.exit_code == 2 and "go with --livekit-url" in alone.output, alone.output
    missing = run(*EXTERNAL)
    assert missing.exit_code == 2 and "needs --livekit-api-key and --livekit-api-secret-file" in missing.output
