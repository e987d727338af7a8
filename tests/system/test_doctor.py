"""`appliance doctor` on the whole appliance: every check passes (exit 0); a stopped program and a secrets file
with a loose mode each fail with the fix (exit 1), and the appliance is left as it was."""

from __future__ import annotations

from harness.appliance import InstalledAppliance
from harness.servers import wait_until

EXPECTED = (
    "config",
    "user",
    "secrets",
    "redis-server",
    "postgres binary",
    "livekit-server",
    "ports",
    "disk",
    "supervisord",
    "program redis",
    "program postgres",
    "program livekit",
    "program flusher",
    "program worker",
    "program worker-alt",
    "program events",
    "redis",
    "postgres",
    "livekit",
    "worker",
)


def checks(stdout: str) -> dict[str, str]:
    """check name -> its line."""
    return {line[6:].split(": ", 1)[0]: line for line in stdout.splitlines()}


def test_every_check_passes_on_a_running_appliance(appliance: InstalledAppliance) -> None:
    result = appliance.run("doctor", check=False)
    assert result.returncode == 0, result.stdout
    print(result.stdout)
    lines = checks(result.stdout)
    assert len(lines) == len(result.stdout.splitlines())  # one line per check, each named once
    assert set(EXPECTED) <= set(lines), result.stdout
    assert all(line.startswith("ok    ") for line in lines.values()), result.stdout
    assert "(the idle one of the two workers)" in lines["program worker-alt"]
    assert "free or ours" in lines["ports"]
    assert result.stderr.strip().startswith("all ") and result.stderr.strip().endswith(" checks passed")


def test_a_stopped_program_fails_with_the_fix(appliance: InstalledAppliance) -> None:
    sup = appliance.supervisor()
    assert sup.stop("flusher", timeout_s=60)
    try:
        result = appliance.run("doctor", check=False)
        assert result.returncode == 1
        line = checks(result.stdout)["program flusher"]
        assert (
            line == "FAIL  program flusher: flusher is STOPPED -> fix: `appliance start`; see `appliance logs flusher`"
        )
    finally:
        sup.start("flusher")
    wait_until(lambda: appliance.run("status", check=False).returncode == 0, 60, "healthy again")


def test_a_loose_secrets_file_fails_with_the_fix(appliance: InstalledAppliance) -> None:
    secrets = appliance.layout.secrets_file
    secrets.chmod(0o640)
    try:
        result = appliance.run("doctor", check=False)
    finally:
        secrets.chmod(0o600)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"FAIL  config: {secrets}: secrets file must be mode 0600 (it is 0640) -> fix: chmod 0600 {secrets}"
    ]
