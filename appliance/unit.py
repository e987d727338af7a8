"""The systemd unit that runs supervisord: rendered from systemd/appliance.service with the box's paths and RAM."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jinja2
import psutil

from appliance.resources import resource_path

TEMPLATE = "systemd/appliance.service"
UNIT_NAME = "appliance.service"
# The worker's stopwaitsecs is its drain timeout plus this: it flushes every room's state after the drain.
WORKER_STOP_MARGIN_S = 30
# TimeoutStopSec exceeds the sum of the programs' stopwaitsecs by this: supervisord's own shutdown.
UNIT_STOP_MARGIN_S = 30
# The service's share of the box's RAM: above MemoryHigh the kernel throttles and reclaims, MemoryMax is the hard
# cap. The remaining 10 % keeps sshd and the OS responsive so an operator can still log in and look.
MEMORY_HIGH = 0.85
MEMORY_MAX = 0.90
RUN = Path("/run")
MIB = 1024 * 1024


def worker_stopwaitsecs(drain_timeout_s: int) -> int:
    """supervisord's stopwaitsecs for the worker: longer than its drain, so a draining worker is not killed."""
    return drain_timeout_s + WORKER_STOP_MARGIN_S


def stop_timeout_s(drain_timeout_s: int, other_stopwaitsecs: Sequence[int] = ()) -> int:
    """systemd's TimeoutStopSec: supervisord stops its programs one after another, so it outlasts all of them."""
    return worker_stopwaitsecs(drain_timeout_s) + sum(other_stopwaitsecs) + UNIT_STOP_MARGIN_S


def runtime_directory(run_dir: Path) -> str | None:
    """RuntimeDirectory= for a run_dir under /run (systemd creates, owns and removes it), else None."""
    if run_dir.is_relative_to(RUN) and run_dir != RUN:
        return str(run_dir.relative_to(RUN))
    return None


def render_unit(
    *,
    user: str,
    venv: Path,
    config_file: Path,
    supervisord_conf: Path,
    data_dir: Path,
    log_dir: Path,
    run_dir: Path,
    drain_timeout_s: int,
    other_stopwaitsecs: Sequence[int] = (),
    total_memory: int | None = None,
    group: str | None = None,
) -> str:
    """The unit's text. `other_stopwaitsecs`: those of every program but the worker; `total_memory` (bytes)
    defaults to this box's RAM."""
    total = psutil.virtual_memory().total if total_memory is None else total_memory
    paths = {"venv": venv, "config_file": config_file, "supervisord_conf": supervisord_conf}
    paths |= {"data_dir": data_dir, "log_dir": log_dir, "run_dir": run_dir}
    for name, path in paths.items():
        # systemd takes absolute paths only, and a space would split ReadWritePaths= in two.
        if not path.is_absolute() or any(c.isspace() for c in str(path)):
            raise ValueError(f"{name}={path}: the unit needs an absolute path without spaces")
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_path(TEMPLATE).parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return environment.get_template(Path(TEMPLATE).name).render(
        user=user,
        group=group or user,
        supervisord=venv / "bin" / "supervisord",
        config_file=config_file,
        supervisord_conf=supervisord_conf,
        data_dir=data_dir,
        log_dir=log_dir,
        run_dir=run_dir,
        runtime_directory=runtime_directory(run_dir),
        drain_timeout_s=drain_timeout_s,
        worker_stopwaitsecs=worker_stopwaitsecs(drain_timeout_s),
        timeout_stop_s=stop_timeout_s(drain_timeout_s, other_stopwaitsecs),
        total_memory_mib=total // MIB,
        memory_high_mib=int(total * MEMORY_HIGH) // MIB,
        memory_max_mib=int(total * MEMORY_MAX) // MIB,
    )
