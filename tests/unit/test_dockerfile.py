"""deploy/docker/Dockerfile read statically: hadolint finds nothing, and what the container tests cannot see from
outside holds (a base users can swap, nothing pulled by a syntax line, a health check and stop signal per image)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def stages() -> dict[str, str]:
    """Each stage's text by its name."""
    text = DOCKERFILE.read_text()
    parts = re.split(r"^FROM \S+ AS (\w+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_say_so() -> None:
    """The linter runs for real here: a Dockerfile with a known fault is refused."""
    done = subprocess.run(
        [str(HADOLINT), "--no-color", "-"], input="FROM debian:12\nRUN cd /tmp\n", capture_output=True, text=True
    )
    assert done.returncode != 0 and "DL3003" in done.stdout, done.stdout


def test_the_base_is_an_argument_and_nothing_is_pulled_by_a_syntax_line() -> None:
    text = DOCKERFILE.read_text()
    assert "# syntax=" not in text.lower()
    first_instruction = next(line for line in text.splitlines() if line and not line.startswith("#"))
    assert first_instruction == "ARG BASE_IMAGE=debian:12"
    assert re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE) == ["${BASE_IMAGE}", "python", "python", "python"]


def test_each_image_has_its_init_health_check_and_stop_signal() -> None:
    found = stages()
    assert list(found) == ["python", "worker", "console", "appliance"]  # the appliance: the default (last) target
    for name in ("worker", "appliance"):
        stage = found[name]
        assert "HEALTHCHECK " in stage and "STOPSIGNAL SIGTERM" in stage, name
        assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"', stage, flags=re.MULTILINE), name
    assert re.search(r"^USER 10001:10001$", found["worker"], flags=re.MULTILINE)
    assert 'appliance", "run"' in found["appliance"]
    # Only livekit-client's bundle goes on from the console stage, not its npm tarball.
    assert "COPY --from=console /opt/appliance/console /opt/appliance/console" in found["appliance"]
    assert "livekit-client.tgz" not in found["appliance"]
