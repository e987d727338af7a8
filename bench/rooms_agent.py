"""The agent the rooms benchmark runs (``worker.agent = "bench.rooms_agent:build"``): the shipped sample agent, and
one line per room process on where its dispatch took time, for the report's step-by-step join -> greeting.

The session calls the factory once the room is connected and its conversation opened, just before it starts the
agent and says the greeting; the line holds livekit's own dispatch stamps (unix seconds) and that moment.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from livekit.agents import Agent, get_job_context

from agent import sample

TIMELINE_ENV = "APPLIANCE_BENCH_TIMELINE"  # the file the lines go to; unset: the sample agent, nothing written


def build() -> Agent:
    path = os.environ.get(TIMELINE_ENV)
    ctx = get_job_context(required=False)
    if path and ctx is not None:
        info = ctx._info  # RunningJobInfo: the stamps are public fields, the holder is not
        line = {
            "room": ctx.room.name,
            "pid": os.getpid(),
            "received": info.received_at,
            "accepted": info.accepted_at,
            "assigned": info.assigned_at,
            "launched": info.launched_at,
            "session": time.time(),
        }
        # One short write with O_APPEND: lines from concurrent room processes never interleave.
        with Path(path).open("a") as out:
            out.write(json.dumps(line) + "\n")
    return sample.build()
