"""The full settings of the appliance: the data plane's sections plus the control plane's own."""

from __future__ import annotations

from pathlib import Path

from agent.settings import AgentSettings, Section, load_settings


class ControlSettings(Section):
    """The control plane's own paths; later issues add more."""

    data_dir: Path = Path("/var/lib/appliance")
    log_dir: Path = Path("/var/log/appliance")
    run_dir: Path = Path("/run/appliance")


class ApplianceSettings(AgentSettings):
    """Everything the control plane reads: the data plane's sections, validated too, and ``control``."""

    control: ControlSettings = ControlSettings()


def load() -> ApplianceSettings:
    """Load from the config file, the secrets file and the environment, or raise SettingsError."""
    return load_settings(ApplianceSettings)
