"""The figures processes record in files (agent/metrics.py) as the exporter and `appliance status` read them
(appliance/recorded.py): a killed process's counts stay, compaction keeps every count once, quantiles are
Prometheus's."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from appliance import recorded

# One process of a program: it records what a room does, then dies as told (a crash leaves no chance to clean up).
RECORDER = """
import os, signal, sys
from agent import metrics
for seconds in [float(s) for s in sys.argv[1].split(",")]:
    metrics.room().reply.observe(seconds)
metrics.appended("redis", 0.002)
metrics.appended("postgres", 0.02)
metrics.room().greeting.observe(0.3)
metrics.flush_lag().observe(0.05)
metrics.room().participants.set(2)
from prometheus_client import Gauge
Gauge("appliance_test_level", "a gauge of this process", multiprocess_mode="livesum").set(1)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def record(directory: Path, replies: list[float], *, end: str = "kill") -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", RECORDER, ",".join(map(str, replies)), end], env=env, capture_output=True, text=True
    )
    assert done.returncode == (-9 if end == "kill" else 0), done.stderr


@contextmanager
def live_recorder(directory: Path, replies: list[float]) -> Iterator[int]:
    """A process that recorded and stays alive (its live gauges count) until the block ends; yields its pid."""
    live = subprocess.Popen(
        [sys.executable, "-c", RECORDER + "\nsys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()",
         ",".join(map(str, replies)), "live"],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert live.stdout is not None and live.stdout.readline() == "ready\n"
        yield live.pid
    finally:
        live.communicate("")


def figures(directory: Path) -> list[Metric]:
    """What a live room process that recorded every figure of agent/metrics.py left, as the exporter reads it."""
    with live_recorder(directory, [0.2]):
        return recorded.read({"worker": directory})


def value(directory: Path, sample: str, **labels: str) -> float:
    families = recorded.read({"worker": directory})
    wanted = {**labels, "program": "worker"}
    found = [s.value for f in families for s in f.samples if s.name == sample and s.labels == wanted]
    assert len(found) == 1, (sample, wanted, found)
    return found[0]


def test_a_killed_room_process_keeps_its_counts(tmp_path: Path) -> None:
    record(tmp_path, [0.2, 0.4, 3.0])
    assert value(tmp_path, "appliance_room_reply_seconds_count") == 3
    assert value(tmp_path, "appliance_room_reply_seconds_sum") == pytest.approx(3.6)
    assert value(tmp_path, "appliance_room_reply_seconds_bucket", le="0.5") == 2
    assert value(tmp_path, "appliance_store_fallbacks_total", tier="postgres") == 1
    # Its live gauge went with it, before any compaction.
    assert not any(s.name == "appliance_test_level" for f in recorded.read({"worker": tmp_path}) for s in f.samples)


def test_compaction_folds_dead_processes_into_one_file_and_counts_each_once(tmp_path: Path) -> None:
    for replies in ([0.2], [0.3, 0.4], [5.0]):
        record(tmp_path, replies)
    before = len(list(tmp_path.glob("*.db")))
    families = recorded.read({"worker": tmp_path}, compact=True)
    kept = sorted(f.name for f in tmp_path.glob("*.db"))
    assert before == 9 and kept == ["counter_archive.db", "histogram_archive.db"]  # the gauges went with them
    reply = next(f for f in families if f.name == "appliance_room_reply_seconds")
    assert {s.name: s.value for s in reply.samples if "le" not in s.labels} == {
        "appliance_room_reply_seconds_count": 4,
        "appliance_room_reply_seconds_sum": pytest.approx(5.9),
    }
    record(tmp_path, [0.1])  # a later room, folded into the same archive
    recorded.read({"worker": tmp_path}, compact=True)
    assert value(tmp_path, "appliance_room_reply_seconds_count") == 5
    assert value(tmp_path, "appliance_store_append_seconds_count", tier="redis") == 4
    assert len(list(tmp_path.glob("*.db"))) == 2


def test_compaction_leaves_live_processes_alone(tmp_path: Path) -> None:
    with live_recorder(tmp_path, [0.2]) as pid:
        recorded.read({"worker": tmp_path}, compact=True)
        assert (tmp_path / f"histogram_{pid}.db").exists()
        assert value(tmp_path, "appliance_test_level") == 1  # its gauge, summed over live processes
        assert value(tmp_path, "appliance_room_participants") == 2


def test_latencies_summarise_every_program(tmp_path: Path) -> None:
    record(tmp_path / "worker", [0.2] * 9 + [20.0])
    record(tmp_path / "worker-alt", [0.2] * 10)
    families = recorded.read({"worker": tmp_path / "worker", "worker-alt": tmp_path / "worker-alt"})
    reply = recorded.latencies(families)["reply"]
    assert reply["count"] == 20
    assert reply["p50"] == pytest.approx(0.1 + 0.15 * 10 / 19)  # inside the (0.1, 0.25] bucket, as Prometheus says
    assert reply["p99"] == pytest.approx(10 + 20 * 0.8)  # rank 19.8 of 20: in the (10, 30] bucket
    assert recorded.latencies(families)["greeting"]["count"] == 2
    assert recorded.latencies([])["greeting"] == {"count": 0, "p50": None, "p95": None, "p99": None}


def test_quantile_is_histogram_quantile() -> None:
    buckets = [(0.1, 5.0), (0.5, 10.0), (math.inf, 10.0)]
    assert recorded.quantile(0.5, buckets) == pytest.approx(0.1)
    assert recorded.quantile(0.75, buckets) == pytest.approx(0.3)
    # Past the highest finite bound Prometheus answers that bound.
    assert recorded.quantile(0.99, [(0.1, 1.0), (math.inf, 4.0)]) == pytest.approx(0.1)
    assert recorded.quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
