"""The figures the appliance's processes record in files (agent/metrics.py, and livekit-agents' own lk_agents_*):
read for the exporter and `appliance status`, and compacted.

Each program that records has its own directory (Layout.figures_dir), where each of its processes (a worker's
room processes among them) keeps its values in files of its own, written as they change: a room whose process
crashed leaves its counts behind. The exporter folds the counters and histograms of processes no longer alive into
one archive file per kind, so a box that served thousands of rooms reads a handful of files per scrape, and drops
their gauges (a dead process's gauge says nothing). Readers hold the directory's lock shared, the compaction
holds it exclusively: no reader sees a room's counts twice or not at all.
"""

from __future__ import annotations

import fcntl
import math
import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from appliance import programs as registry

if TYPE_CHECKING:
    from appliance.layout import Layout
    from appliance.settings import ApplianceSettings

# The histograms `appliance status` summarises, by the name it shows.
LATENCIES = {
    "greeting": "appliance_room_greeting_seconds",
    "reply": "appliance_room_reply_seconds",
    "append": "appliance_store_append_seconds",
    "flush lag": "appliance_flusher_flush_lag_seconds",
}
QUANTILES = (0.5, 0.95, 0.99)


def directories(settings: ApplianceSettings, layout: Layout) -> dict[str, Path]:
    """The directory of each program of this box that records figures; none while [metrics] is off."""
    if not settings.metrics.enabled:
        return {}
    return {p.name: layout.figures_dir(p.name) for p in registry.on_this_box(settings) if p.records}


def read(directories: Mapping[str, Path], *, compact: bool = False) -> list[Metric]:
    """Every family recorded in these programs' directories, each sample labelled with its program."""
    families: dict[str, Metric] = {}
    for program, directory in directories.items():
        if not directory.is_dir():
            continue
        with _locked(directory, exclusive=compact):
            if compact:
                _compact(directory)
            files = [str(f) for f in directory.glob("*.db") if f.stat().st_size > 0 and not _dead_live_gauge(f)]
            try:
                recorded = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            except (FileNotFoundError, struct.error):  # the worker empties its directory as it starts
                continue
        for metric in recorded:
            merged = families.setdefault(metric.name, Metric(metric.name, metric.documentation, metric.type))
            merged.samples += [s._replace(labels={**s.labels, "program": program}) for s in metric.samples]
    return list(families.values())


@contextmanager
def _locked(directory: Path, *, exclusive: bool) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pid_of(file: Path) -> tuple[str, int | None]:
    """A figures file's kind and the pid that wrote it: ("gauge_livesum", 123); None for an archive."""
    kind, _, pid = file.stem.rpartition("_")
    return kind, int(pid) if pid.isdigit() else None


def _dead_live_gauge(file: Path) -> bool:
    """A gauge of a process no longer alive that counts only while its process lives (livesum and the like)."""
    kind, pid = _pid_of(file)
    return kind.startswith("gauge_live") and pid is not None and not psutil.pid_exists(pid)


def _compact(directory: Path) -> None:
    """Fold the files of processes no longer alive into ``<kind>_archive.db``; drop their gauges.

    The archive is written aside and renamed into place before the folded files go: a crash in between counts
    those processes twice once, never loses them."""
    dead: dict[str, list[Path]] = {}
    for file in directory.glob("*.db"):
        kind, pid = _pid_of(file)
        if pid is None or psutil.pid_exists(pid):
            continue
        if kind.startswith("gauge"):
            file.unlink(missing_ok=True)
        else:
            dead.setdefault(kind, []).append(file)
    for kind, files in dead.items():
        archive = directory / f"{kind}_archive.db"
        totals: dict[str, float] = {}
        for file in [archive, *files] if archive.exists() else files:
            for key, value, _, _ in MmapedDict.read_all_values_from_file(str(file)):  # type: ignore[no-untyped-call]
                totals[key] = totals.get(key, 0.0) + value
        aside = directory / f"{kind}_archive.new"
        aside.unlink(missing_ok=True)
        written = MmapedDict(str(aside))  # type: ignore[no-untyped-call]
        for key, value in totals.items():
            written.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
        written.close()  # type: ignore[no-untyped-call]
        aside.replace(archive)
        for file in files:
            file.unlink()


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile over cumulative (upper bound, count) buckets ending at +Inf: linear within
    the bucket the rank falls in; the highest finite bound when it falls in +Inf; None when nothing was observed."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below) if count > below else upper
        lower, below = upper, count
    return lower


def latencies(families: list[Metric]) -> dict[str, dict[str, float | None]]:
    """Each of LATENCIES as its count and quantiles (seconds), over every program and label."""
    by_name = {family.name: family for family in families}
    result: dict[str, dict[str, float | None]] = {}
    for shown, name in LATENCIES.items():
        buckets: dict[float, float] = {}
        count = 0.0
        for sample in by_name[name].samples if name in by_name else []:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == f"{name}_count":
                count += sample.value
        pairs = list(buckets.items())
        figures: dict[str, float | None] = {"count": count}
        result[shown] = figures | {f"p{round(q * 100)}": quantile(q, pairs) for q in QUANTILES}
    return result
