"""Unit tests read settings only from their tmp_path: no APPLIANCE_* variable of the caller leaks in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty config file in tmp_path; secrets.toml, when a test writes one, is found beside it."""
    for name in list(os.environ):
        if name.upper().startswith("APPLIANCE_"):
            monkeypatch.delenv(name)
    config = tmp_path / "appliance.toml"
    config.write_text("")
    monkeypatch.setenv("APPLIANCE_CONFIG", str(config))
