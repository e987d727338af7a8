"""Benchmark of the conversation store: acknowledged appends, durable throughput and flush lag, against a naive
per-message INSERT and langchain-postgres, on the same PostgreSQL with the same messages, in one run.

    python -m bench.store [--quick] [--json] [--use-config] [--profile]

Without --use-config it starts private Redis (appendfsync everysec and always) and PostgreSQL servers on
temporary directories; with it, it uses the running appliance's servers under its own key prefix and its own
conversations, and removes what it wrote. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.anatomy import anatomy, render_anatomy
from bench.baselines import langchain_postgres, naive_insert
from bench.environment import (
    BenchError,
    Env,
    clean_up,
    configured_env,
    describe_disk,
    describe_libraries,
    describe_servers,
    private_env,
)
from bench.figures import FULL, QUICK, Plan, Report, Target, make_messages, render_json, render_table
from bench.store_phases import PRODUCERS, store_phases

STARTED = time.monotonic()

# The targets this store is held to.
APPEND_P50_MS = 0.2
APPEND_P99_MS = 1.0
DURABLE_VS_LANGCHAIN = 25
LAG_P99_MS = 250
LAG_RATE = 5000


def progress(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {text}", file=sys.stderr, flush=True)


def run(env: Env, plan: Plan) -> Report:
    """Every contender, one after the other (never two at once: they would share the two cores)."""
    messages = make_messages()
    header = describe_libraries() | {"servers": describe_servers(env), "disk": describe_disk(env.workdir)}
    results = asyncio.run(store_phases(env, plan, messages, progress))
    progress("baseline: naive INSERT")
    results.append(naive_insert(env, plan, messages))
    progress("baseline: langchain-postgres")
    results.append(langchain_postgres(env, plan, messages))
    report = Report(header, results)
    judge(report)
    return report


def judge(report: Report) -> None:
    """Ratios against the baselines, and the targets."""
    by = {r.key: r for r in report.results}
    append = next(r for r in report.results if r.key.startswith("append_1_"))  # the main Redis's
    durable, lag = by[f"durable_{PRODUCERS}"], by["flush_lag"]
    for base in ("naive_insert", "langchain_postgres"):
        report.ratios[f"store durable msg/s / {base} msg/s"] = ratio(durable.msg_per_s, by[base].msg_per_s)
    for base in ("naive_insert", "langchain_postgres"):
        report.ratios[f"{base} p50 / store append p50"] = ratio(by[base].p50_ms, append.p50_ms)
    versus = report.ratios["store durable msg/s / langchain_postgres msg/s"] or 0.0
    p50, p99 = append.p50_ms or math.inf, append.p99_ms or math.inf
    lag_rate, lag_p99 = lag.msg_per_s or 0.0, lag.p99_ms or math.inf
    mode = append.key.rsplit("_", 1)[-1]
    report.targets = [
        Target(f"append p50 <= {APPEND_P50_MS} ms, 1 producer ({mode})", f"{p50:.3f} ms", p50 <= APPEND_P50_MS),
        Target(f"append p99 <= {APPEND_P99_MS:g} ms, 1 producer ({mode})", f"{p99:.3f} ms", p99 <= APPEND_P99_MS),
        Target(
            f"durable msg/s >= {DURABLE_VS_LANGCHAIN}x langchain-postgres",
            f"{versus:.1f}x",
            versus >= DURABLE_VS_LANGCHAIN,
        ),
        # Only a load actually offered at the target rate (within 5%) can meet the lag target.
        Target(
            f"flush lag p99 <= {LAG_P99_MS} ms at {LAG_RATE // 1000}k msg/s",
            f"{lag_p99:.1f} ms at {lag_rate:.0f} msg/s",
            lag_p99 <= LAG_P99_MS and lag_rate >= 0.95 * LAG_RATE,
        ),
    ]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def profile(env: Env) -> str:
    rows, stats = asyncio.run(anatomy(env, make_messages()))
    print(stats, file=sys.stderr)
    return render_anatomy(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="smaller counts: about 30 seconds")
    parser.add_argument(
        "--use-config",
        action="store_true",
        help="use the running appliance's Redis and PostgreSQL (its settings file and environment)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: time each layer of one append, and cProfile the append loop (to stderr)",
    )
    args = parser.parse_args()
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            progress("loading the appliance's settings" if args.use_config else "starting servers")
            tag = uuid.uuid4().hex[:8]
            env = (configured_env if args.use_config else private_env)(stack, workdir, tag)
            stack.callback(clean_up, env)
            if args.profile:
                output = profile(env)
            else:
                report = run(env, QUICK if args.quick else FULL)
                output = render_json(report) if args.json else render_table(report)
            progress("done")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(output)


if __name__ == "__main__":
    main()
