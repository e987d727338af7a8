"""The control plane's small web programs (the exporter, the console): aiohttp apps served until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aiohttp import web

from appliance.layout import Layout
from appliance.settings import ApplianceSettings


async def serve_until_signal(sites: Sequence[tuple[web.Application, str, int]], shutdown_timeout: float) -> None:
    """Each app on its (host, port) until SIGTERM or SIGINT; ``shutdown_timeout`` is how long an open connection
    may hold up the stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners = []
    for app, host, port in sites:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def run_program(serve: Callable[[ApplianceSettings, Layout], Coroutine[Any, Any, None]]) -> None:
    """A program's main: logging set up, the settings loaded (or a one-line error and an exit), ``serve`` run."""
    from agent.logs import setup_logging
    from agent.settings import config_path, load_or_exit

    setup_logging()
    settings = load_or_exit(ApplianceSettings)
    setup_logging(settings.logging)
    asyncio.run(serve(settings, Layout.of(settings, config_path(os.environ))))
