"""The console's doors tried in a real browser, as visitors would: wrong passwords (said, then slowed), a link
used twice or after it expired, a form on another site posting to the console with the operator's cookie, and a
link's session asking for a token to another room or as another identity. Each is refused and the page says why.
(tests/system/test_console.py tries the same doors over plain HTTP, with what a browser would not send.)"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import Page, expect

from harness.appliance import InstalledAppliance
from harness.browser import Person, chromium
from harness.servers import free_port
from tests.browser.conftest import PASSWORD, console_url

ASK_TOKENS = """async (asked) => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const statuses = [];
  for (const [room, identity] of asked) {
    const answer = await fetch("/api/token", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ room, identity }),
    });
    statuses.push(answer.status);
  }
  return statuses;
}"""


def log_in(page: Page, url: str, password: str) -> str:
    """Submit the login form; the login page's error after it ("" once in)."""
    page.goto(url)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    error = page.locator("#error")
    return (error.text_content() or "") if error.count() else ""


def test_wrong_passwords_are_said_then_slowed_and_the_right_one_gets_in_after_the_wait(
    box: InstalledAppliance,
) -> None:
    url = console_url(box)
    with chromium() as browser:
        mallory = Person(browser)
        said = []
        for _ in range(8):  # three free tries, then each must wait 1 s, 2 s, 4 s...: one comes too soon
            said.append(log_in(mallory.page, url, "not the password"))
            if said[-1].startswith("too many"):
                break
        assert said[:3] == ["wrong password"] * 3, said
        assert said[-1].startswith("too many wrong passwords: try again in"), said
        wait_s = int(said[-1].split("try again in ")[1].split()[0])
        assert log_in(mallory.page, url, PASSWORD).startswith("too many")  # even the right one waits its turn
        time.sleep(wait_s + 0.5)
        assert log_in(mallory.page, url, PASSWORD) == ""  # in (and the address cleared)
        mallory.page.wait_for_selector("#join-button:enabled")
        assert mallory.hosts == {"127.0.0.1"}
        mallory.close()


def test_a_link_works_once_for_its_room_and_identity_and_not_after_it_expires(box: InstalledAppliance) -> None:
    link = box.run("console", "link", "door-room", "--identity", "bob").stdout.strip()
    late = box.run("console", "link", "door-room", "--identity", "late", "--ttl", "1s").stdout.strip()
    with chromium() as browser:
        bob = Person(browser)
        bob.page.goto(link)
        expect(bob.page.locator("main")).to_contain_text("door-room")
        bob.page.click("#use-link")
        bob.page.wait_for_selector("#join-button:enabled")
        expect(bob.page.locator("#room")).to_have_value("door-room")
        expect(bob.page.locator("#identity")).to_have_value("bob")
        asked = [["door-room", "bob"], ["other-room", "bob"], ["door-room", "mallory"]]
        assert bob.page.evaluate(ASK_TOKENS, asked) == [200, 403, 403]

        eve = Person(browser)  # someone else with the same link, after bob used it
        eve.page.goto(link)
        eve.page.click("#use-link")
        expect(eve.page.locator("#error")).to_have_text("this link was used already")
        time.sleep(1.5)
        eve.page.goto(late)
        expect(eve.page.locator("#error")).to_have_text("this link is not valid or has expired")
        for person in (bob, eve):
            assert person.hosts == {"127.0.0.1"}, person.hosts
            person.close()


@contextlib.contextmanager
def other_site(console: str) -> Iterator[str]:
    """A page on another origin (another port) whose form posts to the console's /logout as soon as it loads."""
    page = (
        f'<!doctype html><form id="f" method="post" action="{console}logout"></form>'
        '<script>document.getElementById("f").submit()</script>'
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_form_on_another_site_cannot_act_with_the_operators_session(box: InstalledAppliance) -> None:
    url = console_url(box)
    with chromium() as browser, other_site(url) as evil:
        operator = Person(browser)
        assert log_in(operator.page, url, PASSWORD) == ""
        operator.page.wait_for_selector("#join-button:enabled")
        with operator.page.expect_response(f"{url}logout") as posted:
            operator.page.goto(evil)  # the browser sends the cookie (same site: 127.0.0.1), and its Origin
        assert posted.value.status == 403
        assert "cross-site request refused" in operator.page.content()
        operator.page.goto(url)
        operator.page.wait_for_selector("#join-button:enabled")  # still logged in: nothing was done
        operator.close()
