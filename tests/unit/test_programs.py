"""The program registry: the facts every control-plane module reads from it."""

from __future__ import annotations

from appliance import programs
from appliance.settings import ApplianceSettings
from tests.unit.test_render import SECRETS, rendered, supervisord


def test_a_restore_stops_the_workers_before_the_flusher() -> None:
    assert programs.WRITERS == ("worker", "worker-alt", "flusher")


def test_services_are_in_start_order_and_the_two_workers_are_one() -> None:
    assert programs.SERVICES == (
        "redis", "postgres", "livekit", "metrics", "prometheus", "console", "flusher", "worker"
    )  # fmt: skip
    assert programs.service_of("worker-alt") == "worker" and programs.LOGGED[0] == "supervisord"


def test_a_settings_section_restarts_its_readers_only() -> None:
    assert programs.readers("models") == {"worker"}
    assert programs.readers("redis") == {"worker", "flusher", "metrics"}
    assert programs.readers("metrics") == {"metrics", "prometheus"}
    assert programs.readers("livekit_server") == frozenset()  # its rendered file restarts livekit


def test_a_worker_box_runs_and_listens_for_its_own_programs_only() -> None:
    box = ApplianceSettings(**SECRETS, control={"role": "worker"}, livekit_server={"enabled": False})  # type: ignore[arg-type]
    assert [p.name for p in programs.on_this_box(box)] == ["metrics", "flusher", "worker", "worker-alt"]
    assert {setting for setting, _, _ in programs.ports(box)} == {
        "metrics.port", "metrics.health_port",
        "worker.health_port", "worker.status_port", "control.alt_health_port", "control.alt_status_port",
    }  # fmt: skip
    quiet = ApplianceSettings(**SECRETS, metrics={"enabled": False})  # type: ignore[arg-type]
    assert "metrics" not in [p.name for p in programs.on_this_box(quiet)]


def test_the_second_worker_is_told_its_own_ports_and_supervisord_gets_the_registrys_order() -> None:
    settings = ApplianceSettings(**SECRETS)  # type: ignore[arg-type]
    conf = supervisord(rendered()["supervisord.conf"])
    for program in programs.on_this_box(settings):
        assert conf.getint(f"program:{program.name}", "priority") == program.priority
    alt = conf.get("program:worker-alt", "environment")
    assert f'APPLIANCE_WORKER__STATUS_PORT="{programs.status_port(settings, "worker-alt")}"' in alt
    assert "APPLIANCE_WORKER__STATUS_PORT" not in conf.get("program:worker", "environment")
