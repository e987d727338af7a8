"""Limits a room's process sets on itself: a memory backstop, and death with its parent.

livekit samples a room process's memory every few seconds and kills it over ``job_memory_limit_mb``; a runaway
allocation can take gigabytes between two samples. RLIMIT_DATA makes such an allocation fail at once instead:
set at the process's measured size when its room starts plus the hard limit, so healthy rooms (thread stacks,
malloc arenas, the Rust FFI's reservations, all counted once the room is connected) stay well below it.
"""

from __future__ import annotations

import ctypes
import logging
import signal

import psutil

log = logging.getLogger("agent.limits")
PR_SET_PDEATHSIG = 1
MiB = 2**20


def data_size() -> int:
    """Bytes of the process's private writable memory (VmData + stack), what RLIMIT_DATA counts."""
    return int(psutil.Process().memory_info().data)


def apply_memory_backstop(limit_mb: float) -> int | None:
    """Cap this process's data segment at its current size plus ``limit_mb``; returns the cap in bytes."""
    if limit_mb <= 0:
        return None
    cap = data_size() + int(limit_mb * MiB)
    psutil.Process().rlimit(psutil.RLIMIT_DATA, (cap, cap))
    log.info("memory backstop: RLIMIT_DATA %d MiB", cap // MiB)
    return cap


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies: a room must not keep an agent that nothing monitors."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
