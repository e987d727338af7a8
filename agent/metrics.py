"""What room processes and the flusher measure, as Prometheus histograms and counters.

A room's process has no HTTP server: with PROMETHEUS_MULTIPROC_DIR set (the appliance sets it for the programs
whose figures are exported, appliance/render.py), prometheus-client keeps each process's values in a file of that
directory, written as they change, so a crashed room's counts stay behind; the exporter reads the files
(appliance/recorded.py). Without it the values live in memory and nobody reads them.

Each kind of process creates only its own figures, on first use (a figure without labels writes its file as it
is created): a room's process never exports the flusher's, nor the flusher a room's.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

# What a person waits for: from a fraction of a second (text) to seconds (a spoken reply through an LLM).
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _directory_made() -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class RoomFigures:
    greeting: Histogram
    reply: Histogram
    append: Histogram
    fallbacks: Counter
    participants: Gauge


@functools.cache
def room() -> RoomFigures:
    """A room process's figures, created on first use."""
    _directory_made()
    figures = RoomFigures(
        greeting=Histogram(
            "appliance_room_greeting_seconds",
            "From a room's process taking its job to its greeting sent",
            buckets=_WAIT_BUCKETS,
        ),
        reply=Histogram(
            "appliance_room_reply_seconds",
            "From a participant's line stored to the agent's reply sent",
            buckets=_WAIT_BUCKETS,
        ),
        append=Histogram(
            "appliance_store_append_seconds",
            "From a message given to the store to its acknowledgement, by the tier that took it",
            ["tier"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        ),
        fallbacks=Counter(
            "appliance_store_fallbacks",
            "Messages stored around Redis (down, full or refusing), by the tier that took them",
            ["tier"],
        ),
        # Summed over the live processes: a room's process that died takes its participants with it.
        participants=Gauge(
            "appliance_room_participants",
            "People (not agents) in the rooms this program's processes serve",
            multiprocess_mode="livesum",
        ),
    )
    for tier in ("postgres", "spool"):
        figures.fallbacks.labels(tier)  # 0 until it happens: rates and alerts start at 0
    return figures


@functools.cache
def flush_lag() -> Histogram:
    """The flusher's figure, created on first use."""
    _directory_made()
    return Histogram(
        "appliance_flusher_flush_lag_seconds",
        "Age of a write-ahead entry when the flusher stored it in PostgreSQL",
        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    )


def appended(tier: str, seconds: float) -> None:
    """One message acknowledged by ``tier``: its latency, and a fallback when that tier is not Redis."""
    figures = room()
    figures.append.labels(tier).observe(seconds)
    if tier != "redis":
        figures.fallbacks.labels(tier).inc()
