"""How long install.sh takes on a box where it has nothing to do: the median of N re-runs in a fresh Debian 12 root.

    python -m bench.install_rerun [--runs 5]        (as root: debootstrap root, mounts, chroot, a network namespace)

The root is installed as tests/fresh installs it (the same helpers: downloads from the host's network, a bundled
livekit-server on loopback), its appliance restarted in a private network namespace, then ``install.sh --yes`` is
run N times there; every run must succeed, say nothing is wrong and restart nothing. The target, a re-run within
15 s, is reported here rather than asserted by a test: a loaded CI machine would fail it for reasons of its own.
Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

from bench.environment import BenchError
from harness.freshroot import prepared_root, restart_here, run_install
from harness.livekit import PrivateNetwork

TARGET_S = 15.0
STARTED = time.monotonic()


def progress(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {text}", file=sys.stderr, flush=True)


def measure(runs: int) -> tuple[float, list[float]]:
    """(the first install's seconds, each re-run's seconds)."""
    with contextlib.ExitStack() as stack:
        try:
            network = PrivateNetwork().enter()
        except PermissionError as exc:
            raise BenchError(f"a private network namespace is needed: {exc}") from None
        stack.callback(network.leave)
        root = stack.enter_context(prepared_root(network))
        progress(f"installing into {root.path} (downloads from the host's network: minutes the first time)")
        started = time.monotonic()
        run_install(root, host_network=True)
        first = time.monotonic() - started
        restart_here(root)
        times = []
        for run in range(1, runs + 1):
            before = {p.pid for p in root.processes()}
            started = time.monotonic()
            run_install(root, timeout=300)
            times.append(time.monotonic() - started)
            if {p.pid for p in root.processes()} != before:
                raise BenchError(f"re-run {run} restarted something: a re-run must change nothing")
            progress(f"re-run {run}/{runs}: {times[-1]:.1f} s")
        return first, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="re-runs to time (default 5)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        if os.geteuid() != 0:
            raise BenchError("run as root (or with sudo): a debootstrap root, its mounts and chroot need root")
        first, times = measure(args.runs)
    except (BenchError, AssertionError) as exc:
        print(f"error: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    median = statistics.median(times)
    verdict = "within" if median <= TARGET_S else "OVER"
    print(f"first install:  {first:.1f} s")
    print(f"re-run:         median {median:.1f} s of {len(times)} (min {min(times):.1f}, max {max(times):.1f})")
    print(f"target:         {TARGET_S:.0f} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
