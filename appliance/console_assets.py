"""livekit-client's browser bundle for the console: the npm registry's tarball, checked against the sha512 in
config/livekit-client.lock, its one file put in ``console.assets_dir``. The console serves it from the box."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.files import write_atomic
from appliance.programs import BY_NAME
from appliance.resources import resource_path
from appliance.settings import ApplianceSettings

BUNDLE = "livekit-client.umd.js"
STAMP = "livekit-client.integrity"  # the integrity of the tarball the bundle came from


@dataclass(frozen=True)
class Lock:
    version: str
    tarball: str
    integrity: str
    member: str

    @classmethod
    def read(cls) -> Lock:
        return cls(**tomllib.loads(resource_path("config/livekit-client.lock").read_text()))


def integrity(data: bytes) -> str:
    """npm's form: ``sha512-<base64>``."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def ensure(settings: ApplianceSettings, given: Path | None, report: Callable[[str, str], None]) -> None:
    """The bundle in place (from ``given``, a tarball, else downloaded), or unchanged when it is already the
    locked version's."""
    if not BY_NAME["console"].runs_with(settings):  # off, or a worker-role box (no console there)
        return
    lock = Lock.read()
    target = settings.console.assets_dir / BUNDLE
    stamp = settings.console.assets_dir / STAMP
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == lock.integrity:
        report("unchanged", f"livekit-client {lock.version} ({target})")
        return
    data = given.read_bytes() if given else _download(lock.tarball)
    if integrity(data) != lock.integrity:
        where = given or lock.tarball
        raise ApplianceError(f"{where}: its sha512 is not the one config/livekit-client.lock names: refused")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            member = archive.extractfile(lock.member)
            bundle = member.read() if member else b""
    except (tarfile.TarError, KeyError) as exc:
        raise ApplianceError(f"livekit-client {lock.version}: no {lock.member} in its tarball ({exc})") from None
    settings.console.assets_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomic(target, bundle, mode=0o644)
    write_atomic(stamp, lock.integrity + "\n", mode=0o644)
    report("installed", f"livekit-client {lock.version} ({target})")


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data: bytes = response.read()
            return data
    except (urllib.error.URLError, TimeoutError) as exc:
        raise ApplianceError(
            f"{url}: cannot download livekit-client ({exc}): pass --livekit-client-tgz PATH (that tarball)"
        ) from None


def main() -> int:
    """``python -m appliance.console_assets FILE``: the locked tarball, downloaded and checked, saved as FILE (kept
    when it is there already): for installs without the registry (``--livekit-client-tgz FILE``) and the tests."""
    import sys

    if len(sys.argv) != 2:
        print("usage: python -m appliance.console_assets FILE", file=sys.stderr)
        return 2
    target, lock = Path(sys.argv[1]), Lock.read()
    if target.is_file() and integrity(target.read_bytes()) == lock.integrity:
        return 0
    try:
        data = _download(lock.tarball)
        if integrity(data) != lock.integrity:
            raise ApplianceError(f"{lock.tarball}: its sha512 is not the one config/livekit-client.lock names")
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data, mode=0o644)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
