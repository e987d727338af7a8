"""Where the repository's data folders (config/, systemd/) are: in the checkout, or where `pip install .` put them."""

from __future__ import annotations

import sys
from pathlib import Path

# pyproject.toml's [tool.setuptools.data-files] installs config/ and systemd/ here, under sys.prefix (the venv).
SHARE = Path("share") / "livekit-appliance"
_CHECKOUT = Path(__file__).resolve().parents[1]


def resource_path(relative: str | Path) -> Path:
    """The path of `relative` (e.g. "systemd/appliance.service"): the checkout's copy when running from one
    (`pip install -e .`, tests), else the installed copy; FileNotFoundError when neither exists."""
    candidates = [Path(sys.prefix) / SHARE / relative]
    # A checkout is recognised by its pyproject.toml, so a stray site-packages/config/ never counts as one.
    if (_CHECKOUT / "pyproject.toml").is_file():
        candidates.insert(0, _CHECKOUT / relative)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relative}: not in {' nor '.join(str(c.parent) for c in candidates)}")
