"""A box that already runs Debian's own Redis and PostgreSQL for something else (issue 5, test 8's other half):
install.sh and uninstall leave them exactly as they were: enabled, running (the same processes), the same
clusters. Ours are separate (own data, sockets, ports)."""

from __future__ import annotations

import time

import pytest

from harness.chroot import FreshRoot
from harness.freshroot import (
    APPLIANCE,
    assert_state,
    debian_instances,
    expected_state,
    explain,
    fresh_root,
    run_install,
)
from harness.livekit import PrivateNetwork
from tests.fresh.conftest import TIMINGS

pytestmark = [pytest.mark.fresh, pytest.mark.timeout(1800)]

CREATECLUSTER_CONF = "/etc/postgresql-common/createcluster.d/50-appliance.conf"


def start_debian_instances(root: FreshRoot) -> None:
    """redis-server and postgresql installed as Debian ships them (a main cluster on 5432, Redis on 6379), started
    from the private network namespace, as this box's own services."""
    policy = root.path / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")  # installed here, started below where we want them
    policy.chmod(0o755)
    apt = root.run(
        ["sh", "-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server postgresql"],
        host_network=True,
        env={"DEBIAN_FRONTEND": "noninteractive"},
        timeout=900,
    )
    policy.unlink()
    assert apt.returncode == 0, explain(apt)
    for command in (["/etc/init.d/redis-server", "start"], ["pg_ctlcluster", "15", "main", "start"]):
        done = root.run(command, timeout=60)
        assert done.returncode == 0, explain(done)


def test_debian_redis_and_postgresql_already_running_are_left_alone(private_network: PrivateNetwork | None) -> None:
    with fresh_root(private_network) as root:
        start_debian_instances(root)
        before = debian_instances(root)
        assert before.redis_enabled and before.postgresql_enabled, before
        assert [line.split()[:4] for line in before.clusters] == [["15", "main", "5432", "online"]]
        assert [name for name, _ in before.processes] == ["postgres", "redis-server"]
        state = expected_state(root)
        assert state["REDIS_SERVER_PACKAGE"] == state["POSTGRESQL_PACKAGE"] == "installed", state
        assert state["REDIS_SERVER_ENABLED"] == state["POSTGRESQL_ENABLED"] == "enabled", state
        # Only the one that comes with a package the appliance adds (the bundled Prometheus's) is kept off.
        assert state["SERVICES_DISABLED"] == "prometheus.service", state

        started = time.monotonic()
        done = run_install(root, host_network=True)
        TIMINGS.append(("install.sh --yes beside Debian's own Redis and PostgreSQL", time.monotonic() - started))
        services = [line for line in (done.stdout + done.stderr).splitlines() if "Debian's services" in line]
        assert services and not any(name in services[0] for name in ("redis-server", "postgresql")), services
        assert not root.exists(CREATECLUSTER_CONF)
        assert_state(root, state)
        assert debian_instances(root) == before

        done = root.run([APPLIANCE, "uninstall", "--purge", "--yes"], timeout=600)
        assert done.returncode == 0, explain(done)
        assert debian_instances(root) == before
        left = {p.name() for p in root.processes()}
        assert left <= {"redis-server", "postgres"}, left
        assert not root.exists("/opt/appliance") and not root.exists("/var/lib/appliance")
