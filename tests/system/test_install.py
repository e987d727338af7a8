"""`appliance install`: the whole appliance comes up healthy; a second run changes and restarts nothing; a bad
setting stops it before anything is touched; a changed setting restarts only its readers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from harness.appliance import InstalledAppliance


def outcomes(stderr: str) -> dict[str, str]:
    """The installer's progress lines, 'what' -> outcome."""
    lines = [line.split(None, 1) for line in stderr.splitlines() if line.startswith("  ")]
    return {what: outcome for outcome, what in lines}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()}


def test_installed_appliance_runs_every_program_and_is_healthy(appliance: InstalledAppliance) -> None:
    running = {p.name: p.state for p in appliance.supervisor().processes()}
    for name in ("redis", "postgres", "livekit", "flusher"):
        assert running[name] == "RUNNING", running
    # One of the two workers runs (a graceful restart swaps them), the other is idle.
    assert sorted([running["worker"], running["worker-alt"]]) == ["RUNNING", "STOPPED"], running
    result = appliance.run("status", "--json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0, report


def test_files_have_tight_modes_and_no_secret_leaks_into_world_readable_files(appliance: InstalledAppliance) -> None:
    layout = appliance.layout
    assert layout.etc_dir.stat().st_mode & 0o777 == 0o750
    assert layout.secrets_file.stat().st_mode & 0o777 == 0o600
    secret = appliance.settings.redis.password
    assert secret is not None
    for path in layout.etc_dir.iterdir():
        if path.stat().st_mode & 0o077:
            assert secret.get_secret_value() not in path.read_text(), path


def test_second_install_changes_and_restarts_nothing(appliance: InstalledAppliance) -> None:
    pids = {p.name: p.pid for p in appliance.supervisor().processes()}
    before = snapshot(appliance.layout.etc_dir)
    result = appliance.install()
    changed = {
        what: outcome for what, outcome in outcomes(result.stderr).items() if outcome not in ("unchanged", "healthy")
    }
    assert changed == {}
    assert "restarted: nothing" in result.stderr, result.stderr
    assert snapshot(appliance.layout.etc_dir) == before
    assert {p.name: p.pid for p in appliance.supervisor().processes()} == pids


def test_bad_setting_is_one_line_naming_it_and_nothing_is_touched(
    new_appliance: Callable[..., InstalledAppliance],
) -> None:
    installed = new_appliance(extra="")
    installed.config_file.write_text(
        installed.config_file.read_text().replace("num_idle_processes = 1", "num_idle_processes = -3")
    )
    before = snapshot(installed.prefix)
    result = installed.install(check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: worker.num_idle_processes:"), lines
    assert snapshot(installed.prefix) == before
    assert not (installed.prefix / "run").exists()


def test_changed_setting_restarts_only_its_readers(new_appliance: Callable[..., InstalledAppliance]) -> None:
    installed = new_appliance()
    installed.install()
    pids = {p.name: p.pid for p in installed.supervisor().processes()}
    config = installed.config_file
    config.write_text(config.read_text().replace("[flusher]\n", "") + "\n[flusher]\nbatch_size = 250\n")
    result = installed.run("reconfigure")
    assert "restarted: flusher" in result.stderr, result.stderr
    after = {p.name: p.pid for p in installed.supervisor().processes()}
    assert after["flusher"] != pids["flusher"]
    for name in ("redis", "postgres", "livekit", "worker"):
        assert after[name] == pids[name], name
