"""What a run does (Plan, the messages) and what it reports (Result, Target, Report), as a table or JSON."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Plan:
    """How much each phase does; every loop stops at its count or its time, whichever comes first."""

    append_n: int
    append_s: float
    durable_n: int
    durable_s: float
    lag_rate: int  # offered load, msg/s
    lag_s: float
    baseline_n: int
    baseline_s: float


FULL = Plan(
    append_n=60_000,
    append_s=12,
    durable_n=150_000,
    durable_s=40,
    lag_rate=5000,
    lag_s=10,
    baseline_n=20_000,
    baseline_s=10,
)
QUICK = Plan(
    append_n=15_000, append_s=3, durable_n=40_000, durable_s=8, lag_rate=5000, lag_s=4, baseline_n=5000, baseline_s=2.5
)


CONTENT_BYTES = 500
DISTINCT_MESSAGES = 256  # cycled through; enough that no contender benefits from caching one payload


def make_messages() -> list[str]:
    """The same ~500-byte contents for every contender: words of mixed length, a few non-ASCII letters."""
    rng = random.Random(7)
    words = [
        "the",
        "order",
        "arrived",
        "yesterday",
        "but",
        "déjà",
        "vu",
        "refund",
        "please",
        "naïve",
        "agent",
        "ticket",
        "number",
        "café",
        "shipping",
        "address",
        "changed",
        "thanks",
        "again",
        "when",
    ]
    out = []
    for _ in range(DISTINCT_MESSAGES):
        text = ""
        while len(text.encode()) < CONTENT_BYTES:
            text += rng.choice(words) + " "
        out.append(text.encode()[:CONTENT_BYTES].decode(errors="ignore"))
    return out


@dataclass
class Result:
    key: str
    label: str
    messages: int  # acknowledged (or committed) during the measurement
    seconds: float
    samples: int  # latency samples behind p50/p99
    p50_ms: float | None
    p99_ms: float | None
    msg_per_s: float | None
    note: str = ""
    details: dict[str, float] = field(default_factory=dict)

    @classmethod
    def timed(cls, key: str, label: str, latencies_ns: list[int], seconds: float, note: str = "") -> Result:
        """From one latency sample per message, measured over ``seconds``."""
        ordered = [ns / 1e6 for ns in sorted(latencies_ns)]
        return cls(
            key,
            label,
            len(ordered),
            seconds,
            len(ordered),
            quantile(ordered, 0.5),
            quantile(ordered, 0.99),
            len(ordered) / seconds if seconds else None,
            note,
        )


@dataclass
class Target:
    name: str
    value: str
    met: bool


@dataclass
class Report:
    header: dict[str, str]
    results: list[Result]
    ratios: dict[str, float | None] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)


def quantile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of sorted values."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


MACHINE = ("servers", "disk")  # header lines about the machine; the rest is the hot path's libraries


def render_table(report: Report) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = ["hot path: " + ", ".join(f"{k} {v}" for k, v in report.header.items() if k not in MACHINE)]
    lines += [f"{k}: {report.header[k]}" for k in MACHINE] + [""]
    head = f"{'figure':<44} {'messages':>8} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8} {'msg/s':>7}  note"
    lines += [head, "-" * len(head)]
    for r in report.results:
        lines.append(
            f"{r.label:<44} {r.messages:>8} {r.samples or '-':>8} {num(r.p50_ms, '.3f'):>8} "
            f"{num(r.p99_ms, '.3f'):>8} {num(r.msg_per_s, '.0f'):>7}  {r.note}"
        )
    lines += ["", "ratios:"]
    lines += [f"  {name:<56} {num(value, '.1f')}x" for name, value in report.ratios.items()]
    lines += ["", "targets:"]
    lines += [f"  [{'met' if t.met else 'NOT MET':>7}] {t.name:<48} {t.value}" for t in report.targets]
    return "\n".join(lines)


def render_json(report: Report) -> str:
    return json.dumps(asdict(report), indent=2)
