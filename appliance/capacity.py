"""``appliance capacity``'s arithmetic: rooms per box from the memory and CPU a room costs, and the design note's
cost table recomputed from them.

A room's cost is measured on this box (the PSS of the rooms open now, the CPU their processes use over a short
window) or given. A box of a given size holds the rooms its memory allows after a reserve (the system, the worker
and its idle processes; with the stores on the box, Redis's cap and PostgreSQL too) and the rooms its CPU allows
at a target utilisation (the note's autoscaling target, 70 %); the smaller one binds.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import psutil

# The design note's boxes, prices and other line items, per month.
NOTE_MB_PER_ROOM = 110.0


@dataclass(frozen=True)
class BoxSize:
    name: str
    vcpus: int
    memory_gb: int
    price: float  # per month, the note's


SMALL = BoxSize("8 vCPU / 16 GB", 8, 16, 100.0)
LARGE = BoxSize("16 vCPU / 32 GB", 16, 32, 200.0)


@dataclass(frozen=True)
class Tier:
    """A row of the note's cost table: concurrent rooms, the box it used, and its other costs."""

    rooms: int
    box: BoxSize
    others: dict[str, float]
    note_total: float


NOTE_TABLE = (
    Tier(50, SMALL, {"Redis 2 GB": 20.0, "PostgreSQL 20 GB": 30.0}, 150.0),
    Tier(500, SMALL, {"Redis 8 GB": 80.0, "PostgreSQL 100 GB": 100.0, "load balancer": 20.0}, 500.0),
    Tier(5000, LARGE, {"3 Redis nodes 16 GB": 480.0, "PostgreSQL 500 GB": 500.0, "LB/CDN": 100.0,
                       "monitoring": 200.0}, 3280.0),
)  # fmt: skip

SYSTEM_RESERVE_MB = 2048.0  # the OS, sshd, journald, the page cache a box needs to stay responsive
CPU_TARGET = 0.7  # of every vCPU: the note's autoscaling target


@dataclass(frozen=True)
class RoomCost:
    pss_mb: float  # memory per room
    cpu_cores: float  # CPU per room, in cores (0.05: 5 % of one core)
    worker_mb: float  # the worker, its forkserver and idle processes: once per box
    measured: str  # where the figures come from


@dataclass(frozen=True)
class Fit:
    box: str
    by_memory: int
    by_cpu: int | None  # None: no CPU measured per room

    @property
    def rooms(self) -> int:
        return self.by_memory if self.by_cpu is None else min(self.by_memory, self.by_cpu)

    @property
    def bound_by(self) -> str:
        return "memory" if self.by_cpu is None or self.by_memory <= self.by_cpu else "CPU"


def fit(box: BoxSize, cost: RoomCost, *, stores_mb: float = 0.0) -> Fit:
    """Rooms ``box`` holds: its memory after the reserve (system, worker, the stores when on the box) over a room's
    PSS, and CPU_TARGET of its vCPUs over a room's CPU."""
    free_mb = box.memory_gb * 1024 - SYSTEM_RESERVE_MB - cost.worker_mb - stores_mb
    by_memory = max(0, _whole(free_mb / cost.pss_mb))
    by_cpu = _whole(box.vcpus * CPU_TARGET / cost.cpu_cores) if cost.cpu_cores > 0 else None
    return Fit(box.name, by_memory, by_cpu)


def _whole(rooms: float) -> int:
    """Whole rooms, a float's rounding error aside (5.6 / 0.05 is 111.99999999999999)."""
    return math.floor(rooms + 1e-9)


@dataclass(frozen=True)
class CostRow:
    rooms: int
    box: str
    boxes: int
    rooms_per_box: int
    total: float
    per_room: float
    note_total: float


def cost_table(cost: RoomCost) -> list[CostRow]:
    """The note's table with as many boxes as these room costs need (worker boxes: the stores are elsewhere)."""
    rows = []
    for tier in NOTE_TABLE:
        per_box = fit(tier.box, cost).rooms
        boxes = math.ceil(tier.rooms / per_box) if per_box else 0
        total = boxes * tier.box.price + sum(tier.others.values()) if per_box else math.inf
        rows.append(CostRow(tier.rooms, tier.box.name, boxes, per_box, total, total / tier.rooms, tier.note_total))
    return rows


def measure(rooms: list[tuple[int, float]], worker_mb: float, sample_s: float) -> RoomCost:
    """A room's cost on this box: the median PSS of the rooms open now ((pid, PSS MB) each), and the CPU their
    processes use over ``sample_s`` seconds, per room."""
    if not rooms:
        raise ValueError("no room is open to measure: give --pss-mb (and --cpu-per-room), e.g. bench.rooms' figures")
    processes = []
    for pid, _ in rooms:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            continue
    before = [_cpu(p) for p in processes]
    time.sleep(sample_s)
    spent = sum(max(0.0, _cpu(p) - b) for p, b in zip(processes, before, strict=True))
    return RoomCost(
        pss_mb=statistics.median(pss for _, pss in rooms),
        cpu_cores=spent / sample_s / max(1, len(processes)),
        worker_mb=worker_mb,
        measured=f"{len(rooms)} rooms open on this box, CPU over {sample_s:g} s",
    )


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def report(cost: RoomCost) -> dict[str, object]:
    """Everything `appliance capacity` prints."""
    return {
        "room": asdict(cost),
        "boxes": [asdict(f) | {"rooms": f.rooms, "bound_by": f.bound_by} for f in (fit(SMALL, cost), fit(LARGE, cost))],
        "costs": [asdict(row) for row in cost_table(cost)],
        "assumptions": {
            "system_reserve_mb": SYSTEM_RESERVE_MB,
            "cpu_target": CPU_TARGET,
            "note_mb_per_room": NOTE_MB_PER_ROOM,
            "prices": "the design note's: $100 per 8 vCPU/16 GB box, $200 per 16 vCPU/32 GB box, stores as listed",
        },
    }
