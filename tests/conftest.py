"""Fixtures: private Redis and PostgreSQL for the session, a fresh database and key prefix for each test."""

from __future__ import annotations

import os
import signal
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from livekit.rtc._ffi_client import FfiClient

from agent.settings import AgentSettings, FlusherSettings, StoreSettings
from agent.store.migrate import migrate
from agent.store.store import ConversationStore
from harness.livekit import PrivateNetwork, binary
from harness.requirements import ci_problems
from harness.servers import PostgresServer, RedisServer

TEMPLATE_DB = "appliance_template"

# Under CI (.ci/run sets APPLIANCE_CI=1) a skip is a failing promise: only the tests named here may skip, each
# with the reason a machine of CI's kind truly cannot give what it needs. Keys are node id prefixes.
ALLOWED_SKIPS: dict[str, str] = {}
UNDER_CI = os.environ.get("APPLIANCE_CI") == "1"
SECONDS_BY_DIR: defaultdict[str, float] = defaultdict(float)
# Tests before which Ctrl-C was found ignored or blocked in this process (see _ctrl_c_restored).
LEFT_CTRL_C: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Under CI, a machine that would make tests skip stops the run at once, in one line saying what it lacks."""
    if not UNDER_CI:
        return
    problems = ci_problems()
    try:
        found = binary()
    except RuntimeError as exc:
        problems.append(str(exc))
    else:
        from appliance.host import bundled_livekit_version, livekit_version

        # The suite proves the server the appliance bundles, not whichever one is on the machine.
        version, wanted = livekit_version(found), bundled_livekit_version()
        if version != wanted:
            problems.append(f"{found} is livekit-server {version}, not {wanted} (scripts/build-livekit-server)")
    if problems:
        raise pytest.UsageError("this machine cannot run the whole suite: " + "; ".join(problems))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    SECONDS_BY_DIR[item.nodeid.split("/")[1] if item.nodeid.count("/") > 1 else item.nodeid] += report.duration
    if UNDER_CI and report.skipped and not any(item.nodeid.startswith(key) for key in ALLOWED_SKIPS):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, and not in tests/conftest.py ALLOWED_SKIPS: {reason}"


@pytest.fixture(autouse=True)
def _ctrl_c_restored(request: pytest.FixtureRequest) -> None:
    """Ctrl-C as a terminal gives it, before every test. Every child inherits an ignored or blocked SIGINT, so a
    test that interrupts a CLI (``logs -f``, ``status --watch``) would wait forever in a session started as a
    shell's background job (which ignores SIGINT) or after a test that left it so (livekit-agents masks it around
    its process starts)."""
    ignored = signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if ignored or blocked:
        LEFT_CTRL_C.append(request.node.nodeid)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Time per test directory (setup, call and teardown), the figure each note reports."""
    if LEFT_CTRL_C:
        terminalreporter.section("Ctrl-C found ignored or blocked before (restored)")
        for nodeid in LEFT_CTRL_C:
            terminalreporter.write_line(nodeid)
    if SECONDS_BY_DIR:
        terminalreporter.section("time per test directory")
        for directory, seconds in sorted(SECONDS_BY_DIR.items()):
            terminalreporter.write_line(f"tests/{directory}: {seconds:.0f} s")


@pytest.fixture(scope="session", autouse=True)
def private_network() -> Iterator[PrivateNetwork | None]:
    """The whole session runs in a private network namespace when one can be made (root): WebRTC in the e2e tests
    works only there (see PrivateNetwork), and every server must listen on the same loopback as its clients, so
    it is entered before any server starts. Without root the e2e tests skip; the others run on the host's."""
    if FfiClient._instance is not None:
        pytest.fail("the livekit rtc SDK started before the private network: its threads would stay outside")
    try:
        network = PrivateNetwork().enter()
    except PermissionError:
        yield None
        return
    yield network
    network.leave()


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    server.create_database(TEMPLATE_DB)
    with server.connect(TEMPLATE_DB) as conn:
        migrate(conn)
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def fresh_database(pg: PostgresServer) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    pg.create_database(name, template=TEMPLATE_DB)
    return name


def make_settings(
    redis_server: RedisServer, pg: PostgresServer, dbname: str, workdir: Path, **store: object
) -> AgentSettings:
    """Settings for one test: its own database, key prefix, spool directory and flusher consumer."""
    tag = uuid.uuid4().hex[:10]
    redis_server.allow_prefix(f"t{tag}:")
    return AgentSettings(
        redis=redis_server.settings(acl_user="worker"),  # as a room's process connects; FlusherProcess as flusher
        postgres=pg.settings(dbname),
        store=StoreSettings(key_prefix=f"t{tag}:", spool_dir=workdir / "spool", **store),
        # Short intervals so recovery shows within a test's patience.
        flusher=FlusherSettings(
            consumer=f"flusher-{tag}",
            claim_idle_ms=1000,
            claim_every_s=1,
            spool_scan_s=0.5,
            stats_every_s=0.5,
        ),
    )


@pytest.fixture
def settings(pg: PostgresServer, redis_server: RedisServer, tmp_path: Path) -> AgentSettings:
    return make_settings(redis_server, pg, fresh_database(pg), tmp_path)


@pytest.fixture
async def store(settings: AgentSettings) -> AsyncIterator[ConversationStore]:
    async with ConversationStore(settings) as s:
        yield s


@pytest.fixture
def private_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, to stop and start."""
    server = PostgresServer().start()
    server.create_database("appliance")
    with server.connect("appliance") as conn:
        migrate(conn)
    yield server
    server.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, to kill and restart."""
    server = RedisServer().start()
    yield server
    server.close()
