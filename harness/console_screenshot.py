"""The README's picture of the web console: a real appliance, two people in one room (the operator logged in with
the password, a guest through a one-time link), photographed by headless chromium.

    sudo python -m harness.console_screenshot [docs/console.png]

Everything runs in a private network namespace (loopback only): the appliance, the browser and its pages.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import expect

from harness.appliance import InstalledAppliance
from harness.browser import Person, chromium
from harness.livekit import PrivateNetwork

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "a password for the picture"


def photograph(appliance: InstalledAppliance, target: Path) -> None:
    url = f"http://127.0.0.1:{appliance.settings.console.port}"
    link = appliance.run("console", "link", "front-desk", "--identity", "bob").stdout.strip()
    with chromium() as browser:
        alice, bob = Person(browser), Person(browser)
        alice.page.set_viewport_size({"width": 1100, "height": 720})
        alice.page.goto(url)
        alice.page.fill("#password", PASSWORD)
        alice.page.click("button[type=submit]")
        alice.page.wait_for_selector("#join-button:enabled")
        alice.page.fill("#room", "front-desk")
        alice.page.fill("#identity", "alice")
        alice.page.click("#join-button")
        expect(alice.page.locator("#transcript li.agent").first).to_contain_text("Hello!", timeout=30_000)
        bob.page.goto(link)
        bob.page.click("#use-link")
        bob.page.click("#join-button")
        expect(alice.page.locator("#participants")).to_contain_text("bob", timeout=20_000)
        for person, line in ((alice, "Good morning! Is the meeting room free at ten?"), (bob, "And can I join?")):
            person.page.fill("#line", line)
            person.page.click("#send")
            expect(alice.page.locator("#transcript li.agent", has_text=line)).to_be_visible(timeout=30_000)
        expect(alice.page.locator("#transcript li.me[data-ack]")).to_have_count(1, timeout=10_000)
        alice.page.screenshot(path=str(target))


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "console.png").resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    network = PrivateNetwork().enter()
    appliance = InstalledAppliance()
    try:
        appliance.write_config()
        appliance.install()
        appliance.run("console", "passwd", stdin=PASSWORD)
        photograph(appliance, target)
    finally:
        appliance.close()
        network.leave()
    print(target)


if __name__ == "__main__":
    main()
