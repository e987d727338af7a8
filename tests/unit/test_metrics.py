"""The exporter's series and the health endpoint's answer, from a status report (the verdict's own rules are
tests/unit/test_status.py's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.metrics import authorized, exposition, health_body
from appliance.probes import Postgres, Redis, Room
from appliance.status import Report
from tests.unit.test_recorded import figures
from tests.unit.test_status import FLUSHER, PG, REDIS, UP, registered, running, whole

ROOMS = [
    Room(room="ann's room", pid=200, pss_mb=80.0, uss_mb=30.0),
    Room(room="bob's room", pid=201, pss_mb=120.0, uss_mb=70.0),
]
# Every figure known, so that every series is there (the rules' and the dashboard's tests ask for them all).
FULL_REDIS = REDIS.model_copy(update={"keys": 42, "keyspace_hits": 900, "keyspace_misses": 100})
FULL_FLUSHER = FLUSHER.model_copy(update={"persisted": 500, "errors": 0, "dead_lettered": 1, "spool_files": 0})


COUNTERS = {"started": 7, "crashes": {"memory": 2}, "redispatches": {"memory": 1}, "reconciled": 2, "given_up": 1}


def report(**fields: object) -> Report:
    values: dict[str, object] = {
        "state": "healthy", "exit_code": 0, "verdict": "healthy: 6 programs running, 2 rooms", "problems": [],
        "supervisord": UP, "programs": [p.model_copy(update={"pss_mb": 50.0}) for p in whole()], "redis": FULL_REDIS,
        "postgres": PG, "flusher": FULL_FLUSHER, "collected_at": 0,
        "livekit": {"ok": True, "url": "ws://127.0.0.1:7880", "latency_ms": 1.5},
        "workers": [registered(rooms=ROOMS, counters=COUNTERS)],
    }  # fmt: skip
    return Report.model_validate({**values, **fields})


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_the_series_say_what_status_says() -> None:
    found = samples(exposition(report(), [], room_names=False, data_dir=Path("/")))
    assert found[("appliance_health", ())] == 0
    assert found[("appliance_livekit_up", ())] == 1
    assert found[("appliance_rooms_active", (("worker", "worker"),))] == 2
    assert found[("appliance_rooms_pss_bytes", (("worker", "worker"),))] == 200 * 2**20
    assert found[("appliance_room_pss_max_bytes", (("worker", "worker"),))] == 120 * 2**20
    assert found[("appliance_room_crashes_total", (("cause", "memory"), ("worker", "worker")))] == 2
    assert found[("appliance_rooms_uss_bytes", (("worker", "worker"),))] == 100 * 2**20
    assert found[("appliance_room_crashes_total", (("cause", "killed"), ("worker", "worker")))] == 0
    assert found[("appliance_room_redispatches_total", (("cause", "memory"), ("worker", "worker")))] == 1
    assert found[("appliance_room_redispatches_total", (("cause", "orphan"), ("worker", "worker")))] == 2
    assert found[("appliance_room_starts_total", (("worker", "worker"),))] == 7
    assert found[("appliance_room_give_ups_total", (("worker", "worker"),))] == 1
    assert found[("appliance_program_state", (("program", "worker-alt"), ("state", "STOPPED")))] == 1
    assert found[("appliance_program_up", (("program", "worker-alt"),))] == 0
    assert found[("appliance_program_up", (("program", "redis"),))] == 1
    assert found[("appliance_redis_maxmemory_bytes", ())] == 2048 * 2**20
    assert found[("appliance_postgres_max_connections", ())] == 100
    assert found[("appliance_flusher_lag_seconds", ())] == pytest.approx(0.003)
    assert found[("appliance_box_memory_available_bytes", ())] > 0
    assert 0 < found[("appliance_box_disk_free_bytes", ())] <= found[("appliance_box_disk_size_bytes", ())]
    assert not any("room" in dict(labels) for _, labels in found)  # no room name unless asked


def test_recorded_figures_go_out_beside_the_report(tmp_path: Path) -> None:
    found = samples(exposition(report(), figures(tmp_path), room_names=False, data_dir=Path("/")))
    assert found[("appliance_room_reply_seconds_count", (("program", "worker"),))] == 1
    assert found[("appliance_store_fallbacks_total", (("program", "worker"), ("tier", "postgres")))] == 1
    assert found[("appliance_health", ())] == 0
    assert found[("appliance_livekit_up", ())] == 1


def test_room_names_are_labels_only_when_asked() -> None:
    found = samples(exposition(report(), [], room_names=True, data_dir=Path("/")))
    assert found[("appliance_room_pss_bytes", (("room", "bob's room"), ("worker", "worker")))] == 120 * 2**20


def test_a_store_that_does_not_answer_is_a_zero_not_a_gap() -> None:
    down = report(redis=Redis(ok=False, error="refused"), postgres=Postgres(ok=False, error="refused"))
    found = samples(exposition(down, [], room_names=False, data_dir=Path("/")))
    assert found[("appliance_redis_up", ())] == 0 and found[("appliance_postgres_up", ())] == 0
    assert ("appliance_redis_used_memory_bytes", ()) not in found


def test_health_is_503_only_when_the_box_cannot_serve_rooms() -> None:
    code, body = health_body(report(state="degraded", exit_code=1, problems=["redis: 95% of maxmemory used"]))
    assert code == 200 and json.loads(body)["state"] == "degraded"
    cases: list[tuple[dict[str, object], str]] = [
        ({"postgres": Postgres(ok=False, error="refused")}, "postgres: refused"),
        ({"workers": [registered(registered=False)]}, "no worker registered with LiveKit takes rooms"),
        ({"programs": [*whole()[:-1], running("flusher", crash_loop=True)]}, "flusher is crash-looping"),
    ]
    for broken, reason in cases:
        code, body = health_body(report(state="degraded", exit_code=1, **broken))
        assert (code, json.loads(body)["unserviceable"]) == (503, [reason])


def test_a_scraper_needs_the_token_when_one_is_set() -> None:
    assert authorized("", None)
    assert authorized("Bearer s3cret", "s3cret")
    assert (
        not authorized("", "s3cret") and not authorized("Bearer nope", "s3cret") and not authorized("s3cret", "s3cret")
    )
