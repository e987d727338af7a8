"""Memory and CPU of the worker's process tree: PSS and USS of each kind of process, where one room's private
memory goes (its smaps), and the CPU time of each party. Blocking (psutil, /proc): call it off the event loop."""

from __future__ import annotations

import contextlib
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

from bench.rooms_report import Memory, Spread

MiB = 2**20
KiB_PER_MiB = 1024
STACK_KIB = 8192  # glibc's default thread stack: an anonymous mapping of exactly this size
INHERITED = "the forkserver's heap and anonymous pages, written since"


def kind_of(proc: psutil.Process, worker: int, rooms: set[int]) -> str:
    """What a process of the worker's tree is: worker, room, forkserver, resource tracker, or idle room process."""
    if proc.pid == worker:
        return "worker"
    if proc.pid in rooms:
        return "room"
    cmdline = " ".join(proc.cmdline())
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if proc.ppid() == worker and "forkserver" in cmdline:
        return "forkserver"
    return "idle"  # a room process the worker lists under no room: prewarmed and waiting, or closing


def measure(worker: int, status_rooms: list[dict[str, Any]], postgres: int) -> Memory:
    """Per-room figures as the worker's /status reports them; the rest from psutil, now."""
    rooms = {int(r["pid"]) for r in status_rooms if r.get("pid")}
    pss: dict[str, float] = defaultdict(float)
    uss: dict[str, float] = defaultdict(float)
    idle_uss: list[float] = []
    root = psutil.Process(worker)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            kind = kind_of(proc, worker, rooms)
            pss[kind] += info.pss / MiB
            uss[kind] += info.uss / MiB
            if kind == "idle":
                idle_uss.append(info.uss / MiB)
    helpers = [k for k in pss if k not in ("room", "idle")]
    backends, pg_pss = postgres_memory(postgres)
    return Memory(
        room_pss=Spread.of([float(r["pss_mb"]) for r in status_rooms if r.get("pss_mb") is not None]),
        room_uss=Spread.of([float(r["uss_mb"]) for r in status_rooms if r.get("uss_mb") is not None]),
        rooms=len(status_rooms),
        idle=len(idle_uss),
        idle_pss=pss["idle"],
        idle_uss=statistics.median(idle_uss) if idle_uss else None,
        worker_pss=sum(pss[k] for k in helpers),
        worker_uss=sum(uss[k] for k in helpers),
        total_pss=sum(pss.values()),
        total_uss=sum(uss.values()),
        helpers={k: round(pss[k], 1) for k in helpers},
        postgres_pss=pg_pss,
        postgres_backends=backends,
    )


def postgres_memory(postmaster: int) -> tuple[int, float]:
    """(backends and other children, PSS MiB of the whole PostgreSQL tree): one connection per room lives here."""
    try:
        root = psutil.Process(postmaster)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0.0
    total = 0.0
    for proc in family:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss / MiB
    return len(family) - 1, total


def mapping_kind(path: str, size_kib: int) -> str:
    if path == "":
        if size_kib == STACK_KIB:
            return "anonymous: thread stacks (8 MiB mappings)"
        return "anonymous, the room's own allocations"
    if path == "[heap]":
        return "[heap], the room's own (the main thread's malloc)"
    if path.startswith("["):
        return "other kernel mappings ([stack], [vvar]...)"
    name = Path(path.split(" (deleted)")[0]).name
    if "livekit_ffi" in name:
        return "liblivekit_ffi.so (data, relocations)"
    if ".so" in name:
        return "other shared libraries (data, relocations)"
    return "other files"


Mapping = tuple[int, int, str]  # start, end, path ("" when anonymous)


def mappings(pid: int) -> list[Mapping]:
    out = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: address perms offset dev inode [path]
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append((start, end, " ".join(fields[5:])))
    return out


def inherited(start: int, end: int, parent: list[Mapping]) -> bool:
    return any(p_start < end and start < p_end for p_start, p_end, _ in parent)


def anatomy(pid: int, parent: int | None) -> list[tuple[str, float, float]]:
    """(mapping kind, USS MiB, PSS MiB) of one process from its smaps, largest USS first. With the ``parent`` it
    was forked from, its heap and anonymous mappings that overlap the parent's are counted as inherited."""
    parent_maps = [m for m in mappings(parent) if m[2] in ("", "[heap]")] if parent else []
    uss: dict[str, int] = defaultdict(int)
    pss: dict[str, int] = defaultdict(int)
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = " ".join(fields[5:])
            if path in ("", "[heap]") and inherited(start, end, parent_maps):
                kind = INHERITED
            else:
                kind = mapping_kind(path, (end - start) // 1024)
        elif fields[0] in ("Private_Clean:", "Private_Dirty:"):
            uss[kind] += int(fields[1])
        elif fields[0] == "Pss:":
            pss[kind] += int(fields[1])
    rows = [(k, uss[k] / KiB_PER_MiB, pss[k] / KiB_PER_MiB) for k in uss]
    return sorted(rows, key=lambda row: -row[1])


def forkserver_of(worker: int) -> int | None:
    """The worker's forkserver, if it runs one (not under spawn)."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(worker).children():
            if "forkserver" in " ".join(child.cmdline()):
                return child.pid
    return None


def threads(pid: int) -> int:
    try:
        return psutil.Process(pid).num_threads()
    except psutil.Error:
        return 0


def median_room(status_rooms: list[dict[str, Any]]) -> int | None:
    """The pid of the room whose USS is the median one."""
    rooms = sorted((r for r in status_rooms if r.get("uss_mb") is not None), key=lambda r: float(r["uss_mb"]))
    return int(rooms[len(rooms) // 2]["pid"]) if rooms else None


def tree_cpu(pid: int) -> float:
    """User + system seconds of a process, its live descendants and the children they have reaped."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in family:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def own_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def cpu_snapshot(worker: int, servers: dict[str, int], flusher: int, exporter: int | None = None) -> dict[str, float]:
    """CPU seconds so far of each party: the worker's tree, this process (the clients), livekit-server, the stores,
    and the exporter when metrics are on."""
    return {
        "worker": tree_cpu(worker),
        "clients": own_cpu(),
        "livekit": tree_cpu(servers["livekit"]),
        "stores": tree_cpu(servers["redis"]) + tree_cpu(servers["postgres"]) + tree_cpu(flusher),
        **({"exporter": tree_cpu(exporter)} if exporter is not None else {}),
        "machine": machine_busy(),
    }


def machine_busy() -> float:
    """CPU seconds every process of the machine has used since boot (all states but idle and iowait)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def cpu_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Each party's CPU seconds between two snapshots; "others" is what the rest of the machine used (another
    program running at the same time makes every latency here worse)."""
    spent = {k: after[k] - before.get(k, 0.0) for k in after}
    machine = spent.pop("machine")
    spent["others"] = max(0.0, machine - sum(spent.values()))
    return {k: round(v, 2) for k, v in spent.items()}
