"""PostgreSQL's memory and worker figures from this box's RAM and CPUs (at install and on reconfigure)."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

MB = 2**20


@dataclass(frozen=True)
class PostgresTuning:
    max_connections: int
    shared_buffers_mb: int
    effective_cache_size_mb: int
    maintenance_work_mem_mb: int
    work_mem_mb: int
    max_worker_processes: int
    max_parallel_workers: int
    max_parallel_workers_per_gather: int


def postgres_tuning(
    *, max_rooms: int, idle_processes: int, total_memory: int | None = None, cpus: int | None = None
) -> PostgresTuning:
    ram_mb = (total_memory if total_memory is not None else psutil.virtual_memory().total) // MB
    cpus = cpus or psutil.cpu_count() or 1
    # Room processes own most of the RAM (~40 MB each plus their models), Redis 2 GB: PostgreSQL takes 10 %
    # for its cache and trusts the OS cache for the rest.
    shared = min(max(ram_mb // 10, 128), 8192)
    # Each room process holds up to 2 connections; during a graceful restart two workers' rooms coexist.
    connections = max(100, 2 * 2 * (max_rooms + idle_processes) + 20)
    return PostgresTuning(
        max_connections=connections,
        shared_buffers_mb=shared,
        effective_cache_size_mb=max(ram_mb // 4, shared),
        maintenance_work_mem_mb=min(max(ram_mb // 32, 64), 1024),
        # The flusher's batches and our indexed lookups sort little; keep per-connection memory small.
        work_mem_mb=8,
        max_worker_processes=max(cpus, 8),
        max_parallel_workers=cpus,
        max_parallel_workers_per_gather=max(1, min(4, cpus // 4)),
    )
