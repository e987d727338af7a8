"""``python -m appliance.console``: the console program, until SIGTERM."""

from __future__ import annotations

import logging

from appliance.console.app import Console
from appliance.layout import Layout
from appliance.serving import run_program, serve_until_signal
from appliance.settings import ApplianceSettings

log = logging.getLogger("appliance.console")


async def serve(settings: ApplianceSettings, layout: Layout) -> None:
    c = settings.console
    log.info("console on http://%s:%d/", c.bind, c.port)
    await serve_until_signal([(Console(settings, layout).app(), c.bind, c.port)], shutdown_timeout=1.0)


if __name__ == "__main__":
    run_program(serve)
