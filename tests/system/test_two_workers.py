"""Two worker boxes (two `install --role worker` on one machine) behind one LiveKit, sharing Redis and PostgreSQL (the
running appliance's): rooms spread across both; SIGKILL of every process of one box (its supervisor too, so
nothing brings it back) → each of its rooms is served by the other within orphan_after_s + reconcile_every_s +
10 s, with its whole conversation, and never two agents in a room. LiveKit's own dispatch spreads the rooms; the
boxes share nothing but the stores."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from livekit import api

from appliance.chatclient import ChatClient
from harness.appliance import InstalledAppliance
from harness.servers import wait_until
from tests.system.conftest import Join
from tests.system.test_status import status
from tests.system.test_worker_box import secret_file, workers_stopped

KILLED_ROOMS = 10


def worker_box(
    make: Callable[..., InstalledAppliance], main: InstalledAppliance, tmp_path: Path, *, max_rooms: int
) -> InstalledAppliance:
    """A worker box on the running appliance's stores and LiveKit (loopback, its passwords from files)."""
    settings = main.settings
    assert settings.redis.password and settings.postgres.password
    assert settings.livekit.api_key and settings.livekit.api_secret
    box = make()
    config = box.config_file.read_text()
    box.config_file.write_text(config.replace("[worker]\n", f"[worker]\nmax_rooms = {max_rooms}\n"))
    files = tmp_path / box.prefix.name
    files.mkdir()
    pg = settings.postgres
    assert pg.password is not None
    box.run(
        "install", "--yes", "--role", "worker",
        "--redis-url", f"redis://127.0.0.1:{settings.redis.port}/0",
        "--redis-password-file", str(secret_file(files, "redis", settings.redis.password.get_secret_value())),
        "--postgres-dsn", f"host=127.0.0.1 port={pg.port} dbname={pg.dbname} user={pg.user} sslmode=disable",
        "--postgres-password-file", str(secret_file(files, "postgres", pg.password.get_secret_value())),
        "--livekit-url", settings.livekit.url,
        "--livekit-api-key", settings.livekit.api_key.get_secret_value(),
        "--livekit-api-secret-file", str(secret_file(files, "livekit", settings.livekit.api_secret.get_secret_value())),
        timeout=400,
    )  # fmt: skip
    return box


def rooms_of(box: InstalledAppliance) -> set[str]:
    _, report = status(box)
    return {r["room"] for w in report["workers"] for r in w["rooms"]}


def kill_everything(box: InstalledAppliance) -> float:
    """SIGKILL supervisord and every process under it at once (again, for any that appeared meanwhile, until none
    is left); when the first round went, unix seconds."""
    root = psutil.Process(box.supervisor().supervisord_pid())
    killed_at = time.time()
    family = [root, *root.children(recursive=True)]

    def gone() -> bool:
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        alive += [p for p in psutil.process_iter(["cmdline"]) if str(box.prefix) in " ".join(p.info["cmdline"] or [])]
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        return not alive

    wait_until(gone, 10, "every process of the box killed", interval=0.01)
    return killed_at


async def agents_in(main: InstalledAppliance, room: str) -> int:
    s = main.settings
    assert s.livekit.api_key and s.livekit.api_secret
    async with api.LiveKitAPI(s.livekit.url, s.livekit.api_key.get_secret_value(),
                              s.livekit.api_secret.get_secret_value()) as lk:  # fmt: skip
        listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return sum(p.kind == api.ParticipantInfo.Kind.AGENT for p in listed.participants)


async def test_a_dead_worker_box_s_rooms_are_served_by_the_other(
    appliance: InstalledAppliance, new_appliance: Callable[..., InstalledAppliance], join: Join, tmp_path: Path
) -> None:
    first = worker_box(new_appliance, appliance, tmp_path, max_rooms=KILLED_ROOMS)
    second = worker_box(new_appliance, appliance, tmp_path, max_rooms=50)
    resume = second.settings.worker.resume_greeting
    orphan_s = second.settings.worker.orphan_after_s + second.settings.worker.reconcile_every_s
    with workers_stopped(appliance):  # LiveKit then has only the two boxes' workers
        assert second.supervisor().stop("worker", timeout_s=60)
        clients: dict[str, ChatClient] = {}
        for n in range(KILLED_ROOMS):
            room = f"pair-{n}"
            clients[room] = await join(appliance, room, f"guest-{n}")
            await clients[room].greeting(60)
            for line in ("first line", "second line"):
                await clients[room].send(f"{line} of {room}")
                await clients[room].reply_containing(f"{line} of {room}")
        assert rooms_of(first) == set(clients)
        second.supervisor().start("worker")
        wait_until(lambda: all(w["registered"] for w in status(second)[1]["workers"]), 60, "the second registered")
        for n in range(4):  # the first is full (max_rooms): LiveKit gives these to the second
            extra = await join(appliance, f"pair-extra-{n}", "late")
            await extra.greeting(60)
        assert len(rooms_of(second)) == 4 and len(rooms_of(first)) == KILLED_ROOMS  # spread across both

        killed_at = kill_everything(first)

        async def back(room: str) -> float:
            await clients[room].reply_containing(resume, 60)
            return time.time() - killed_at

        took = sorted(await asyncio.gather(*(back(room) for room in clients)))
        p50, p99 = statistics.median(took), took[-1]  # 10 samples: the largest is the 99th percentile
        print(f"rooms back after a whole box's SIGKILL: p50 {p50:.1f} s, p99 {p99:.1f} s ({took})")
        if p99 > orphan_s + 10:
            log = (second.layout.log_dir / "worker.log").read_text(errors="replace").splitlines()
            said = [line for line in log if "reconcile" in line or "dispatch" in line or "Error" in line]
            raise AssertionError(f"rooms back after {took}; the second worker said:\n"
                                 + "\n".join(said[-30:]))  # fmt: skip
        for room, client in clients.items():
            await client.send(f"after the death of {room}")
            answer = await client.reply_containing(f"after the death of {room}")
            # greeting + 2 x (line, reply) + the resume greeting + this line: nothing acknowledged lost
            assert "holds 7 messages" in answer, (room, answer)
            assert await agents_in(appliance, room) == 1
        assert rooms_of(second) >= set(clients)
