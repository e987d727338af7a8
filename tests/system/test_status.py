"""Issue 5 tests 2 and 3 on the whole appliance: every program RUNNING and `appliance status` healthy; kill -9 of
each program comes back by itself with a new pid and its restart counted; a program stopped through XML-RPC
makes status degraded (exit 1)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil

from harness.appliance import InstalledAppliance
from harness.servers import wait_until

PROGRAMS = ("events", "redis", "postgres", "livekit", "metrics", "prometheus", "console", "flusher", "worker")
STORES_AND_SERVICES = PROGRAMS[:-1]  # every program but the worker, which a graceful restart may have swapped


def status(appliance: InstalledAppliance, *args: str) -> tuple[int, dict[str, Any]]:
    result = appliance.run("status", "--json", *args, check=False)
    return result.returncode, json.loads(result.stdout)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def programs(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in report["programs"]}


def test_every_program_running_and_status_healthy(appliance: InstalledAppliance) -> None:
    code, report = status(appliance)
    assert code == 0, report["problems"]
    assert report["state"] == "healthy" and report["verdict"].startswith("healthy: 9 programs running")
    found = programs(report)
    for name in STORES_AND_SERVICES:
        assert found[name]["state"] == "RUNNING", found[name]
        assert found[name]["pid"] and found[name]["pss_mb"] > 0 and not found[name]["crash_loop"]
        assert found[name]["restarts"] is not None
    # One of the two workers runs (a graceful restart swaps them), the other is idle.
    running = [name for name in ("worker", "worker-alt") if found[name]["state"] == "RUNNING"]
    assert len(running) == 1 and found[running[0]]["pid"], found
    [worker] = report["workers"]
    assert worker["program"] == running[0] and worker["registered"] and not worker["draining"]
    settings = appliance.settings
    ports = {"worker": settings.worker.status_port, "worker-alt": settings.control.alt_status_port}
    assert worker["port"] == ports[running[0]]
    assert report["redis"]["ok"] and report["redis"]["maxmemory_mb"] == 2048
    assert report["postgres"]["ok"] and report["postgres"]["connections"] >= 1
    assert report["flusher"]["ok"] and report["flusher"]["lag_ms"] < 5000
    assert report["livekit"]["ok"] and report["livekit"]["url"] == appliance.settings.livekit.url
    settings = appliance.settings
    text = json.dumps(report)
    secrets = (
        settings.redis.password,
        settings.postgres.password,
        settings.livekit.api_secret,
        settings.console.secret_key,
    )
    for secret in secrets:
        assert secret is not None and secret.get_secret_value() not in text

    human = appliance.run("status")
    assert human.stdout.splitlines()[0].startswith("healthy: 9 programs running")
    assert "PROGRAM" in human.stdout and "registered as AW_" in human.stdout


def test_kill_9_of_each_program_comes_back_and_an_xmlrpc_stop_is_degraded(
    new_appliance: Callable[..., InstalledAppliance],
) -> None:
    appliance = new_appliance()
    appliance.install()
    sup = appliance.supervisor()
    for name in PROGRAMS:
        _, report = status(appliance)
        before = programs(report)[name]
        assert before["state"] == "RUNNING", before
        family = psutil.Process(before["pid"]).children(recursive=True)
        os.kill(before["pid"], signal.SIGKILL)
        started = time.monotonic()

        def back(name: str = name, old: int = before["pid"]) -> bool:
            info = sup.process(name)
            return info.state == "RUNNING" and info.pid != old

        wait_until(back, 120, f"{name} RUNNING again with a new pid after kill -9")

        # Nothing of the killed program outlives it (the worker's forkserver and room processes included).
        def orphans_gone(family: list[psutil.Process] = family) -> bool:
            return not any(alive(p) for p in family)

        wait_until(orphans_gone, 30, f"{name}'s children gone")
        took = time.monotonic() - started
        counted = before["restarts"] + 1

        def restart_counted(name: str = name, counted: int = counted) -> bool:
            return bool(programs(status(appliance)[1])[name]["restarts"] >= counted)

        wait_until(restart_counted, 30, f"{name}'s restart counted")
        after = programs(status(appliance)[1])[name]
        assert after["pid"] != before["pid"] and after["unexpected_exits"] >= before["unexpected_exits"] + 1
        print(f"{name}: back in {took:.1f} s, restarts {before['restarts']} -> {after['restarts']}")

        # everything else recovers too (the worker re-registers, the flusher reconnects) before the next kill
        def settled() -> bool:
            code, report = status(appliance)
            return code == 0 or all("crash-looping" in problem for problem in report["problems"])

        wait_until(settled, 120, f"the appliance settled after {name}'s kill", interval=1)

    assert sup.stop("flusher", timeout_s=60)
    code, report = status(appliance)
    assert (code, report["state"]) == (1, "degraded"), report
    assert "flusher is STOPPED" in report["problems"]
    human = appliance.run("status", check=False)
    assert human.returncode == 1
    sup.start("flusher")
    wait_until(lambda: programs(status(appliance)[1])["flusher"]["state"] == "RUNNING", 30, "flusher started")
