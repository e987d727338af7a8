"""The fresh-machine tests run last and one at a time: each installs a whole appliance into a new Debian 12 root,
on the appliance's default ports. Their timings are printed in the session's summary."""

from __future__ import annotations

import pytest

# (what, seconds) for the terminal summary: the figures the closing note asks for.
TIMINGS: list[tuple[str, float]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fresh-machine tests after every other test, in their file's order."""
    fresh = [item for item in items if item.get_closest_marker("fresh")]
    if fresh:
        items[:] = [item for item in items if not item.get_closest_marker("fresh")] + fresh


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("fresh machine (Debian 12 debootstrap root)")
        for what, seconds in TIMINGS:
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")
