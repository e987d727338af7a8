"""Where every file of an installed appliance lives, derived from the settings and the config file's place.

One derivation, so that the installer, the CLI and the tests (an appliance in a temporary prefix) agree.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.settings import SECRETS_NAME, config_path
from appliance.settings import ApplianceSettings
from appliance.unit import UNIT_NAME


@dataclass(frozen=True)
class Layout:
    config_file: Path
    data_dir: Path
    log_dir: Path
    run_dir: Path
    unit_dir: Path
    spool_dir: Path
    venv: Path

    @classmethod
    def of(cls, settings: ApplianceSettings, config_file: Path | None = None) -> Layout:
        control = settings.control
        return cls(
            config_file=config_file or config_path(os.environ),
            data_dir=control.data_dir,
            log_dir=control.log_dir,
            run_dir=control.run_dir,
            unit_dir=control.unit_dir,
            spool_dir=settings.store.spool_dir,
            venv=Path(sys.prefix),
        )

    @property
    def etc_dir(self) -> Path:
        return self.config_file.parent

    @property
    def secrets_file(self) -> Path:
        return self.etc_dir / SECRETS_NAME

    @property
    def supervisord_conf(self) -> Path:
        return self.etc_dir / "supervisord.conf"

    @property
    def redis_conf(self) -> Path:
        return self.etc_dir / "redis.conf"

    @property
    def postgres_conf(self) -> Path:
        return self.etc_dir / "postgresql.conf"

    @property
    def pg_hba(self) -> Path:
        return self.etc_dir / "pg_hba.conf"

    @property
    def livekit_conf(self) -> Path:
        return self.etc_dir / "livekit.yaml"

    @property
    def prometheus_conf(self) -> Path:
        return self.etc_dir / "prometheus.yml"

    @property
    def prometheus_rules(self) -> Path:
        return self.etc_dir / "alerts.yml"

    @property
    def prometheus_dir(self) -> Path:
        return self.data_dir / "prometheus"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def pg_data(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisord.sock"

    @property
    def supervisord_pid(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def supervisord_log(self) -> Path:
        return self.log_dir / "supervisord.log"

    @property
    def unit_file(self) -> Path:
        return self.unit_dir / UNIT_NAME

    def figures_dir(self, program: str) -> Path:
        """Where a program's processes keep their figures (agent/metrics.py, appliance/recorded.py)."""
        return self.run_dir / "metrics" / program

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name
