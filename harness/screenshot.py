"""The README's picture of the metrics: a real appliance with rooms in conversation, its bundled Prometheus's graph
page photographed by headless chromium (Grafana cannot be installed here; the panels are the dashboard's queries).

    sudo python -m harness.screenshot [docs/prometheus-graphs.png]

Everything runs in a private network namespace (loopback only): the appliance, its clients and the browser.
About four minutes: rooms arrive one by one and talk, so the graphs have a history.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from appliance.chatclient import ChatClient
from harness.appliance import InstalledAppliance
from harness.livekit import PrivateNetwork
from harness.prometheus import PrometheusAPI
from harness.servers import wait_until

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = [
    "sum(appliance_rooms_active)",
    "sum(rate(appliance_room_reply_seconds_sum[1m])) / sum(rate(appliance_room_reply_seconds_count[1m]))",
    "sum(appliance_rooms_pss_bytes)",
]
ROOMS = 4
LINES = 12  # per room, one every 10 s


def graph_url(port: int) -> str:
    params: dict[str, str] = {}
    for n, expr in enumerate(GRAPHS):
        params |= {f"g{n}.expr": expr, f"g{n}.tab": "0", f"g{n}.range_input": "3m", f"g{n}.stacked": "0"}
    return f"http://127.0.0.1:{port}/graph?{urllib.parse.urlencode(params)}"


async def converse(appliance: InstalledAppliance, url: str, target: Path) -> None:
    """Rooms arriving 20 s apart, each a participant sending a line every 10 s; the photograph is taken while
    they are still in their rooms."""
    clients: list[ChatClient] = []

    async def room(n: int) -> None:
        await asyncio.sleep(20 * n)
        client = await appliance.chat_client(f"demo-room-{n}", f"guest-{n}").connect()
        clients.append(client)
        await client.greeting(60)
        for line in range(LINES - 2 * n):
            await client.send(f"line {line} from room {n}")
            await client.reply(30)
            await asyncio.sleep(10)

    try:
        await asyncio.gather(*(room(n) for n in range(ROOMS)))
        await asyncio.sleep(5)  # a last scrape of every room's figures
        await asyncio.to_thread(photograph, url, target)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


def photograph(url: str, target: Path) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        sys.exit("chromium is not installed: apt-get install chromium")
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    try:
        subprocess.run(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1280,2180", "--virtual-time-budget=20000",
             f"--screenshot={target}", url],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "prometheus-graphs.png").resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    network = PrivateNetwork().enter()
    appliance = InstalledAppliance()
    try:
        appliance.write_config()
        appliance.install()
        port = appliance.settings.metrics.prometheus_port
        wait_until(PrometheusAPI(f"http://127.0.0.1:{port}").ready, 60, "the bundled Prometheus ready")
        asyncio.run(converse(appliance, graph_url(port), target))
    finally:
        appliance.close()
        network.leave()
    print(target)


if __name__ == "__main__":
    main()
