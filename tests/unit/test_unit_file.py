"""The systemd unit: `systemd-analyze verify` is clean, the offline exposure score is at most 2.0, the stop
timings outlast the drain, and nothing that would break the service under a real systemd is in it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import appliance.resources
from appliance.resources import resource_path
from appliance.unit import render_unit, stop_timeout_s, worker_stopwaitsecs

REPO = Path(__file__).parents[2]
GIB = 1024**3
MAX_EXPOSURE = 2.0
# Each would break this service under a real systemd (issue 5): Postgres JIT, remote LLM providers and LiveKit,
# psutil's /proc/meminfo, livekit-server facing clients.
FORBIDDEN = ("MemoryDenyWriteExecute", "IPAddressDeny", "IPAddressAllow", "ProcSubset", "PrivateNetwork")


def render(**overrides: object) -> str:
    """The unit as install renders it, with the production paths and the running venv's supervisord."""
    arguments: dict[str, object] = {
        "user": "appliance",
        "venv": Path(sys.prefix),
        "config_file": Path("/etc/appliance/appliance.toml"),
        "supervisord_conf": Path("/etc/appliance/supervisord.conf"),
        "data_dir": Path("/var/lib/appliance"),
        "log_dir": Path("/var/log/appliance"),
        "run_dir": Path("/run/appliance"),
        "drain_timeout_s": 300,
        "other_stopwaitsecs": (10, 60, 10, 15),
        "total_memory": 32 * GIB,
    }
    arguments.update(overrides)
    return render_unit(**arguments)  # type: ignore[arg-type]


def directives(unit: str) -> dict[str, list[str]]:
    """Every key's values in file order; comments and section headers left out."""
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze is needed (Debian: the systemd package)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def write(unit: str, tmp_path: Path) -> Path:
    path = tmp_path / "appliance.service"
    path.write_text(unit)
    return path


@pytest.mark.parametrize("run_dir", ["/run/appliance", "/srv/appliance/run"])
def test_verify_is_clean(tmp_path: Path, run_dir: str) -> None:
    assert (Path(sys.prefix) / "bin" / "supervisord").exists(), "verify checks ExecStart: install supervisor"
    result = analyze("verify", "--man=false", str(write(render(run_dir=Path(run_dir)), tmp_path)))
    # verify exits 0 on an unknown key or a bad value and only warns: any output is a failure.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_exposure_is_at_most_2(tmp_path: Path) -> None:
    result = analyze("security", "--offline=true", str(write(render(), tmp_path)))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for appliance\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_nothing_that_would_break_the_service() -> None:
    found = directives(render())
    assert [key for key in FORBIDDEN if key in found] == []
    # WebRTC lists the interfaces through netlink; PrivateUsers is unproven without a real systemd.
    assert "AF_NETLINK" in found["RestrictAddressFamilies"][0].split()
    assert "PrivateUsers" not in found


def test_runs_supervisord_unprivileged_and_restarts_it() -> None:
    found = directives(render())
    assert found["Type"] == ["simple"]
    assert found["ExecStart"] == [f"{sys.prefix}/bin/supervisord -n -c /etc/appliance/supervisord.conf"]
    assert found["User"] == found["Group"] == ["appliance"]
    assert found["Environment"] == ["APPLIANCE_CONFIG=/etc/appliance/appliance.toml"]
    assert found["Restart"] == ["always"]
    assert found["StartLimitIntervalSec"] == ["0"]
    assert found["KillMode"] == ["mixed"]
    assert found["OOMPolicy"] == ["continue"]
    assert found["CapabilityBoundingSet"] == [""]
    assert found["ProtectSystem"] == ["strict"]


def test_stop_timings_outlast_the_drain() -> None:
    others = (10, 60, 10, 15)
    timeout = int(directives(render(drain_timeout_s=300, other_stopwaitsecs=others))["TimeoutStopSec"][0])
    assert timeout == stop_timeout_s(300, others)
    assert timeout > worker_stopwaitsecs(300) + sum(others)
    assert worker_stopwaitsecs(300) > 300


def test_memory_limits_come_from_the_ram() -> None:
    found = directives(render(total_memory=32 * GIB))
    high, maximum = (int(found[key][0].removesuffix("M")) for key in ("MemoryHigh", "MemoryMax"))
    assert (high, maximum) == (27852, 29491)  # 85 % and 90 % of 32768 MiB
    default = directives(render(total_memory=None))
    assert 0 < int(default["MemoryHigh"][0].removesuffix("M")) < int(default["MemoryMax"][0].removesuffix("M"))


def test_run_dir_under_run_is_a_runtime_directory() -> None:
    found = directives(render(run_dir=Path("/run/appliance")))
    assert found["RuntimeDirectory"] == ["appliance"]
    assert found["ReadWritePaths"] == ["/var/lib/appliance /var/log/appliance"]
    elsewhere = directives(render(run_dir=Path("/srv/appliance/run")))
    assert "RuntimeDirectory" not in elsewhere
    assert elsewhere["ReadWritePaths"] == ["/var/lib/appliance /var/log/appliance /srv/appliance/run"]


@pytest.mark.parametrize("data_dir", ["var/lib/appliance", "/var/lib/my appliance"])
def test_paths_systemd_cannot_take_are_refused(data_dir: str) -> None:
    with pytest.raises(ValueError, match="data_dir"):
        render(data_dir=Path(data_dir))


def test_resources_are_found_in_the_checkout() -> None:
    assert resource_path("systemd/appliance.service") == REPO / "systemd" / "appliance.service"
    assert resource_path("config/appliance.toml") == REPO / "config" / "appliance.toml"


def test_resources_are_found_where_pip_installs_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "venv" / "share" / "livekit-appliance" / "systemd" / "appliance.service"
    installed.parent.mkdir(parents=True)
    installed.write_text("")
    monkeypatch.setattr(appliance.resources, "_CHECKOUT", tmp_path / "site-packages")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert resource_path("systemd/appliance.service") == installed
    with pytest.raises(FileNotFoundError, match="config/absent"):
        resource_path("config/absent")


def test_pip_install_ships_every_template() -> None:
    """Each file under config/ and systemd/ matches a data-files glob, so `pip install .` copies it."""
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = {
        path
        for target, patterns in data_files.items()
        for pattern in patterns
        for path in REPO.glob(pattern)
        if path.is_file() and target == f"share/livekit-appliance/{path.parent.relative_to(REPO)}"
    }
    present = {path for folder in ("config", "systemd") for path in (REPO / folder).rglob("*") if path.is_file()}
    assert present - shipped == set()
