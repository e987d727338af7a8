"""livekit-client's browser bundle for the console: the npm registry's tarball, checked against the sha512 in
config/livekit-client.lock, its one file put in ``console.assets_dir``. The console serves it from the box.

Only the standard library at import: ``python3 -m appliance.console_assets`` runs from a bare checkout (the image
build fetches the tarball so)."""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.errors import ApplianceError
from appliance.files import write_atomic
from appliance.resources import resource_path

if TYPE_CHECKING:
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
    from appliance.programs import BY_NAME

    if not BY_NAME["console"].runs_with(settings):  # off, or a worker-role box (no console there)
        return
    lock, assets = Lock.read(), settings.console.assets_dir
    if installed(assets, lock):
        report("unchanged", f"livekit-client {lock.version} ({assets / BUNDLE})")
        return
    unpack(given.read_bytes() if given else _download(lock.tarball), str(given or lock.tarball), assets, lock)
    report("installed", f"livekit-client {lock.version} ({assets / BUNDLE})")


def installed(assets: Path, lock: Lock) -> bool:
    stamp = assets / STAMP
    return (assets / BUNDLE).is_file() and stamp.is_file() and stamp.read_text().strip() == lock.integrity


def check(data: bytes, where: str, lock: Lock) -> None:
    """Raises unless ``data`` (the tarball, from ``where``) is the one the lock names."""
    if integrity(data) != lock.integrity:
        raise ApplianceError(f"{where}: its sha512 is not the one config/livekit-client.lock names: refused")


def unpack(data: bytes, where: str, assets: Path, lock: Lock) -> None:
    """The bundle of ``data`` (the tarball, from ``where``) in ``assets``, once its sha512 is the lock's."""
    check(data, where, lock)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            member = archive.extractfile(lock.member)
            bundle = member.read() if member else b""
    except (tarfile.TarError, KeyError) as exc:
        raise ApplianceError(f"livekit-client {lock.version}: no {lock.member} in its tarball ({exc})") from None
    assets.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomic(assets / BUNDLE, bundle, mode=0o644)
    write_atomic(assets / STAMP, lock.integrity + "\n", mode=0o644)


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data: bytes = response.read()
            return data
    except (urllib.error.URLError, TimeoutError) as exc:
        raise ApplianceError(
            f"{url}: cannot download livekit-client ({exc}): pass --livekit-client-tgz PATH (that tarball)"
        ) from None


def main(argv: list[str]) -> int:
    """``python -m appliance.console_assets FILE``: the locked tarball, downloaded and checked, saved as FILE (kept
    when it is there already): for installs without the registry (``--livekit-client-tgz FILE``), the image build
    and the tests. ``... --into DIR FILE``: the bundle of FILE (checked) put in DIR, as an install does."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m appliance.console_assets")
    parser.add_argument("--into", type=Path, metavar="DIR", help="put the bundle of FILE in DIR")
    parser.add_argument("file", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    lock = Lock.read()
    try:
        if args.into is not None:
            unpack(args.file.read_bytes(), str(args.file), args.into, lock)
        elif not (args.file.is_file() and integrity(args.file.read_bytes()) == lock.integrity):
            data = _download(lock.tarball)
            check(data, lock.tarball, lock)
            args.file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(args.file, data, mode=0o644)
    except (ApplianceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
