"""The appliance's worker as one of the benchmark's baselines: ``python -m bench.worker BASELINE``.

"ours" is the worker as production runs it; "defaults" is livekit-agents' forkserver without our modules preloaded;
"spawn" starts each room process from scratch. bench/rooms.py compares them; production never runs this.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Literal

from agent.logs import setup_logging
from agent.settings import AgentSettings, load_or_exit
from agent.worker import serve

BASELINES = ("ours", "defaults", "spawn")


def main() -> None:
    baseline = sys.argv[1] if len(sys.argv) == 2 else ""
    if baseline not in BASELINES:
        sys.exit(f"usage: python -m bench.worker {{{'|'.join(BASELINES)}}} (got {sys.argv[1:]})")
    setup_logging()
    settings = load_or_exit(AgentSettings)
    setup_logging(settings.logging)
    context: Literal["forkserver", "spawn"] = "spawn" if baseline == "spawn" else "forkserver"
    sys.exit(asyncio.run(serve(settings, preload=baseline != "defaults", multiprocessing_context=context)))


if __name__ == "__main__":
    main()
