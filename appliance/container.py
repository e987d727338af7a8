"""``appliance run``: the appliance in the foreground, for a container whose init (tini) runs this.

The same path as an install without systemd (the same templates, settings and programs), but nothing is left
running in the background: the box is prepared (config and secrets written on first start, on the data volume,
never in an image layer; configs rendered; PostgreSQL's cluster made), the database is made and migrated by a
PostgreSQL started alone for that (as the official postgres image's entrypoint does), then this process becomes
supervisord, as the service user, so that supervisord is the init's child and a SIGTERM to the container reaches
it: it stops the programs in reverse order, the worker draining first, and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from appliance import install
from appliance.errors import ApplianceError
from appliance.install import InstallOptions, Prepared, Report
from appliance.render import postgres_bindir
from appliance.service import supervisord_env

POSTGRES_STOP_S = 60


def run(config_file: Path, report: Report) -> NoReturn:
    box = install.prepare(InstallOptions(config_file=config_file), report)
    with _postgres_alone(box):
        install.ensure_database(box.settings, report)
    install.write_state(box)
    report("starting", f"supervisord in the foreground as {box.user.pw_name}")
    _become_supervisord(box)


@contextlib.contextmanager
def _postgres_alone(box: Prepared) -> Iterator[None]:
    """The box's own PostgreSQL, as its program runs it, for the time of the migrations; nothing when the box uses
    a shared one."""
    if not box.settings.runs_stores:
        yield
        return
    postgres = subprocess.Popen(
        [str(postgres_bindir() / "postgres"), "-c", f"config_file={box.layout.postgres_conf}"],
        user=box.user.pw_uid,
        group=box.user.pw_gid,
        extra_groups=[],
        cwd="/",
        stdin=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        postgres.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown: clients cut, a clean checkpoint
        try:
            code = postgres.wait(POSTGRES_STOP_S)
        except subprocess.TimeoutExpired:
            postgres.kill()
            raise ApplianceError(f"PostgreSQL did not stop within {POSTGRES_STOP_S} s after the migrations") from None
        if code != 0:
            raise ApplianceError(f"PostgreSQL exited {code} while the database was prepared (its lines are above)")


def _become_supervisord(box: Prepared) -> NoReturn:
    layout = box.layout
    env = {
        **supervisord_env(layout),
        # The settings given as environment (APPLIANCE_<SECTION>__<KEY>) hold for every program, as they did here.
        **{k: v for k, v in os.environ.items() if k.startswith("APPLIANCE_")},
    }
    os.chdir("/")
    if os.geteuid() == 0 and box.user.pw_uid != 0:
        os.setgroups([])
        os.setgid(box.user.pw_gid)
        os.setuid(box.user.pw_uid)
    supervisord = str(layout.bin("supervisord"))
    # -n: in the foreground; its own lines also go to stdout, the container's log.
    os.execve(supervisord, [supervisord, "-n", "-c", str(layout.supervisord_conf)], env)
