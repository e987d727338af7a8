"""The bundled Prometheus's data in a backup: taken as its own snapshot, put back while it is stopped.

A copy of a live TSDB directory can catch a block mid-compaction; Prometheus's admin API snapshot (hard links of
its blocks, the head written out) is consistent. It listens on loopback only, like every program of the box.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import programs as registry
from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from agent.settings import AgentSettings

PREFIX = "prometheus/"  # its members' names in the backup


@dataclass(frozen=True)
class BundledPrometheus:
    port: int
    data_dir: Path

    @classmethod
    def of(cls, settings: AgentSettings) -> BundledPrometheus | None:
        """This box's bundled Prometheus, when its settings run one."""
        from appliance.layout import Layout
        from appliance.settings import ApplianceSettings

        if not isinstance(settings, ApplianceSettings) or not registry.BY_NAME["prometheus"].runs_with(settings):
            return None
        return cls(settings.metrics.prometheus_port, Layout.of(settings).prometheus_dir)


def snapshot(prometheus: BundledPrometheus, work: Path) -> list[str]:
    """A snapshot of its data, moved under ``work``/prometheus/; the names (relative to ``work``) of its files."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{prometheus.port}/api/v1/admin/tsdb/snapshot", method="POST", data=b""
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            name = json.loads(answer.read())["data"]["name"]
    except (OSError, ValueError, KeyError) as exc:
        raise ApplianceError(f"prometheus: no snapshot ({exc})") from None
    taken = prometheus.data_dir / "snapshots" / name
    try:
        shutil.copytree(taken, work / PREFIX)
    finally:
        shutil.rmtree(taken, ignore_errors=True)
    return sorted(str(path.relative_to(work)) for path in (work / PREFIX).rglob("*") if path.is_file())


def put_back(data_dir: Path, tar: tarfile.TarFile, names: list[str]) -> None:
    """Replace the (stopped) Prometheus's data with the backup's: written beside it, then swapped in whole."""
    from appliance.backup import member

    owner = data_dir.stat()
    incoming = data_dir.with_name(data_dir.name + ".restoring")
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(mode=0o700)
    for name in names:
        relative = Path(name).relative_to(PREFIX)
        if ".." in relative.parts:
            raise ApplianceError(f"prometheus: {name}: not a path inside its data")
        target = incoming / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with member(tar, name) as fh, target.open("wb") as out:
            shutil.copyfileobj(fh, out)
    for path in [incoming, *incoming.rglob("*")]:
        os.chown(path, owner.st_uid, owner.st_gid)
    previous = data_dir.with_name(data_dir.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    data_dir.rename(previous)
    incoming.rename(data_dir)
    shutil.rmtree(previous)
