"""This checkout's work tree as git sees it: what the fresh-machine, systemd and container tests install from."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def copy_work_tree(target: Path, checkout: Path = CHECKOUT) -> Path:
    """Tracked and new files (nothing ignored, such as .venv), into ``target``, which must not exist yet."""
    target.mkdir(parents=True)
    listed = subprocess.run(
        ["git", "-C", str(checkout), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = checkout / name
        if source.is_file():  # a file deleted from the work tree but not from the index is skipped
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target
