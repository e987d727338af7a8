"""``appliance uninstall`` without a machine to spare: what it plans to remove and keep, and install.sh's state
file as it reads it. The real thing runs in test_fresh_install.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import StoreSettings
from appliance.errors import ApplianceError
from appliance.install_state import InstallState
from appliance.layout import Layout
from appliance.settings import ApplianceSettings, ControlSettings
from appliance.uninstall import Plan, our_processes, plan, uninstall

STATE = """\
# Written by install.sh on its first run
APPLIANCE_HOME=/opt/appliance
CLI_LINK=/usr/local/bin/appliance
REDIS_SERVER_PACKAGE=absent
REDIS_SERVER_ENABLED=absent
REDIS_SERVER_ACTIVE=unknown
POSTGRESQL_PACKAGE=installed
POSTGRESQL_ENABLED=enabled
POSTGRESQL_ACTIVE=active
PACKAGES_ADDED="redis-server python3-venv"
"""


def test_state_file_as_install_sh_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "install-state.env"
    path.write_text(STATE)
    state = InstallState.read(path)
    assert state is not None
    assert state.path("APPLIANCE_HOME") == Path("/opt/appliance")
    assert state.path("CREATECLUSTER_CONF") is None
    assert state.words("PACKAGES_ADDED") == ["redis-server", "python3-venv"]
    assert [(s.unit, s.package_before, s.enabled_before, s.active_before) for s in state.services] == [
        ("redis-server.service", "absent", "absent", "unknown"),
        ("postgresql.service", "installed", "enabled", "active"),
    ]
    assert InstallState.read(tmp_path / "none") is None


def prefix_plan(tmp_path: Path, *, purge: bool) -> Plan:
    """An appliance's layout in a temporary prefix, as `appliance install` made it, without install.sh."""
    control = ControlSettings(
        user="no-such-appliance-user",
        data_dir=tmp_path / "data",
        log_dir=tmp_path / "log",
        run_dir=tmp_path / "run",
        unit_dir=tmp_path / "units",
    )
    store = StoreSettings(spool_dir=tmp_path / "data" / "spool")
    settings = ApplianceSettings.model_construct(control=control, store=store)
    layout = Layout.of(settings, tmp_path / "etc" / "appliance.toml")
    for directory in (layout.etc_dir, layout.data_dir / "postgres", layout.log_dir, layout.run_dir, tmp_path / "units"):
        directory.mkdir(parents=True)
    for file in (layout.config_file, layout.secrets_file, layout.supervisord_conf, layout.unit_file):
        file.write_text("x")
    (layout.data_dir / "postgres" / "PG_VERSION").write_text("15")
    (layout.log_dir / "worker.log").write_text("")
    return Plan(layout, control.user, purge, tmp_path / "state.env", None, systemd=False)


def test_uninstall_keeps_data_logs_and_secrets(tmp_path: Path) -> None:
    plan = prefix_plan(tmp_path, purge=False)
    layout = plan.layout
    assert plan.home is None  # not installed by install.sh: no venv of ours to remove
    assert plan.removed == [layout.unit_file, layout.etc_dir, layout.run_dir]
    assert f"remove {layout.etc_dir} (but secrets.toml)" in plan.describe()
    assert our_processes(plan) == []

    report = uninstall(plan, stop_timeout_s=5, progress=lambda line: None)

    assert not layout.unit_file.exists() and not layout.run_dir.exists() and not layout.config_file.exists()
    assert sorted(p.name for p in layout.etc_dir.iterdir()) == ["secrets.toml"]
    assert (layout.data_dir / "postgres" / "PG_VERSION").exists() and (layout.log_dir / "worker.log").exists()
    assert f"kept {layout.data_dir} (--purge deletes it)" in report.done


def test_uninstall_purge_removes_everything(tmp_path: Path) -> None:
    plan = prefix_plan(tmp_path, purge=True)
    uninstall(plan, stop_timeout_s=5, progress=lambda line: None)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["units"]


def test_uninstall_never_deletes_a_system_directory(tmp_path: Path) -> None:
    plan = prefix_plan(tmp_path, purge=True)
    control = ControlSettings(user="no-such-appliance-user", data_dir=Path("/var/lib"), unit_dir=tmp_path / "units")
    settings = ApplianceSettings.model_construct(control=control, store=StoreSettings(spool_dir=tmp_path / "spool"))
    dangerous = Plan(Layout.of(settings, plan.layout.config_file), control.user, True, plan.state_file, None, False)
    with pytest.raises(ApplianceError, match="refusing to delete /var/lib"):
        uninstall(dangerous, stop_timeout_s=5, progress=lambda line: None)
    assert plan.layout.config_file.exists()


def test_install_sh_state_of_another_config_is_ignored(tmp_path: Path) -> None:
    """An appliance in a test prefix on a box install.sh installed must not remove /opt/appliance."""
    prefix = prefix_plan(tmp_path, purge=True)
    state_file = tmp_path / "state.env"
    state_file.write_text(STATE + "CONFIG_FILE=/etc/appliance/appliance.toml\n")
    settings = ApplianceSettings.model_construct(
        control=ControlSettings(user=prefix.user), store=StoreSettings(spool_dir=tmp_path / "data" / "spool")
    )
    planned = plan(settings, prefix.layout, purge=True, state_file=state_file)
    assert planned.state is None and planned.home is None
    assert Path("/opt/appliance") not in planned.removed and state_file not in planned.removed

    state_file.write_text(STATE + f"CONFIG_FILE={prefix.layout.config_file}\n")
    planned = plan(settings, prefix.layout, purge=True, state_file=state_file)
    assert planned.home == Path("/opt/appliance") and planned.removed[-1] == Path("/opt/appliance")
    assert state_file in planned.removed
