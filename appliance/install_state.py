"""The install-state file: the box as the first install found it (Debian's own Redis, PostgreSQL and Prometheus
services, the packages the installer added, where it put things). Written here on the first run of install.sh
(appliance.host), extended by later runs, and read by ``appliance uninstall`` to put the box back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.files import write_atomic

STATE_FILE = Path("/var/lib/appliance/install-state.env")
HEADER = "# Written by the appliance's installer on its first run: the box before it. `appliance uninstall` reads it."
# Debian's services of the packages the appliance installs, and each one's package.
DEBIAN_SERVICES = {
    "redis-server.service": "redis-server",
    "postgresql.service": "postgresql",
    "prometheus.service": "prometheus",
}


def state_key(unit: str) -> str:
    """The state file's key of a unit: redis-server.service -> REDIS_SERVER."""
    return unit.removesuffix(".service").replace("-", "_").upper()


@dataclass(frozen=True)
class DebianService:
    """A Debian service of a package the appliance needs (redis-server, postgresql), as the first install found it."""

    unit: str
    package_before: str  # "installed" or "absent": absent means the installer added the package
    enabled_before: str  # systemctl is-enabled's answer then ("enabled", "disabled", "absent", ...)
    active_before: str  # systemctl is-active's answer then, "unknown" without a running systemd


@dataclass
class InstallState:
    """The state file: KEY=value lines, values optionally double-quoted (a shell could source it)."""

    file: Path
    values: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> InstallState | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        values = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().removeprefix('"').removesuffix('"')
        return cls(path, values)

    def path(self, key: str) -> Path | None:
        value = self.values.get(key, "")
        return Path(value) if value.startswith("/") else None

    def words(self, key: str) -> list[str]:
        return self.values.get(key, "").split()

    def add(self, key: str, *words: str) -> None:
        """Append words to a space-separated list, and write the file (before the change it records)."""
        current = self.words(key)
        self.values[key] = " ".join([*current, *(word for word in words if word not in current)])
        self.write()

    def write(self) -> None:
        lines = [HEADER, *(f'{key}="{value}"' for key, value in self.values.items())]
        self.file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.file, "\n".join(lines) + "\n", mode=0o644)

    @property
    def services(self) -> list[DebianService]:
        found = []
        for unit in DEBIAN_SERVICES:
            key = state_key(unit)
            if f"{key}_PACKAGE" in self.values:
                found.append(
                    DebianService(
                        unit=unit,
                        package_before=self.values[f"{key}_PACKAGE"],
                        enabled_before=self.values.get(f"{key}_ENABLED", "unknown"),
                        active_before=self.values.get(f"{key}_ACTIVE", "unknown"),
                    )
                )
        return found
