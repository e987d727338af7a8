"""``python -m appliance.console``: the console program, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from appliance.console.app import Console
from appliance.layout import Layout
from appliance.settings import ApplianceSettings

log = logging.getLogger("appliance.console")


async def serve(settings: ApplianceSettings, layout: Layout) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    c = settings.console
    runner = web.AppRunner(Console(settings, layout).app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, c.bind, c.port).start()
    log.info("console on http://%s:%d/", c.bind, c.port)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    from agent.logs import setup_logging
    from agent.settings import config_path, load_or_exit

    setup_logging()
    settings = load_or_exit(ApplianceSettings)
    setup_logging(settings.logging)
    asyncio.run(serve(settings, Layout.of(settings, config_path(os.environ))))


if __name__ == "__main__":
    main()
