"""Writing a file so that a reader sees the old content or the new one, never a part, even across a crash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, *, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Write to a temporary name beside ``path`` (a dot name: no reader globs it), fsync, rename over ``path``.
    ``owner`` (uid, gid) is applied when running as root, so a service user keeps its access."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fh.fileno(), *owner)
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rewrite(path: Path, data: str) -> None:
    """Write an existing file anew, atomically, keeping its mode and owner (settings files: 0640 root's, secrets
    0600 the service user's)."""
    st = path.stat()
    write_atomic(path, data, mode=st.st_mode & 0o777, owner=(st.st_uid, st.st_gid))
