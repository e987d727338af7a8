"""Two people log in, join one room and talk with each other and the agent; each line shows its acknowledgement;
the page loads nothing from outside the box."""

from __future__ import annotations

import json
import os
import re
import signal

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from harness.appliance import InstalledAppliance
from harness.browser import Person, chromium
from harness.servers import wait_until
from tests.browser.conftest import PASSWORD, console_url


def log_in_and_join(person: Person, url: str, room: str, identity: str) -> None:
    page = person.page
    page.goto(url)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#join-button:enabled")  # the page's script has run
    page.fill("#room", room)
    page.fill("#identity", identity)
    page.click("#join-button")
    joined = "() => !document.getElementById('call').hidden || !!document.getElementById('error').textContent"
    try:
        page.wait_for_function(joined, timeout=45_000)
    except PlaywrightTimeout:
        raise AssertionError("the page did not join: " + "\n".join(person.console[-30:])) from None
    assert page.locator("#call").is_visible(), page.locator("#error").text_content()


def test_two_people_and_the_agent_in_one_room(box: InstalledAppliance) -> None:
    url = console_url(box)
    with chromium() as browser:
        alice, bob = Person(browser), Person(browser)
        log_in_and_join(alice, url, "browser-room", "alice")
        expect(alice.page.locator("#transcript li.agent").first).to_contain_text("Hello!", timeout=30_000)
        expect(alice.page.locator("#agent-state")).to_have_attribute("data-state", "present")
        log_in_and_join(bob, url, "browser-room", "bob")
        expect(bob.page.locator("#participants")).to_contain_text("alice", timeout=10_000)
        expect(bob.page.locator("#participants")).to_contain_text("(agent)")

        alice.page.fill("#line", "hello from alice")
        alice.page.click("#send")
        mine = alice.page.locator("#transcript li.me", has_text="hello from alice")
        expect(mine).to_have_attribute("data-ack", re.compile(r"^[0-9a-f-]{36}$"), timeout=20_000)  # stored
        expect(bob.page.locator("#transcript li.human", has_text="hello from alice")).to_be_visible(timeout=10_000)
        answer = "[offline model] I have heard alice"
        for person in (alice, bob):
            expect(person.page.locator("#transcript li.agent", has_text=answer)).to_be_visible(timeout=30_000)

        bob.page.fill("#line", "and bob is here too")
        bob.page.click("#send")
        expect(alice.page.locator("#transcript li.human", has_text="and bob is here too")).to_be_visible(timeout=10_000)
        expect(bob.page.locator("#transcript li.agent", has_text="I have heard alice, bob")).to_be_visible(
            timeout=30_000
        )
        for person in (alice, bob):
            assert person.hosts == {"127.0.0.1"}, person.hosts  # nothing from outside the box
            person.close()


def room_pid(box: InstalledAppliance, room: str) -> int | None:
    report = json.loads(box.run("status", "--json", check=False).stdout)
    return next((r["pid"] for w in report["workers"] for r in w["rooms"] if r["room"] == room), None)


def test_the_page_tells_when_the_agent_died_and_when_it_resumed(box: InstalledAppliance) -> None:
    """A room's process killed: the page says the agent left and is being dispatched again, then that the next
    one resumed the conversation (whose greeting is the resume greeting)."""
    with chromium() as browser:
        carol = Person(browser)
        log_in_and_join(carol, console_url(box), "crash-room", "carol")
        page = carol.page
        expect(page.locator("#transcript li.agent").first).to_contain_text("Hello!", timeout=30_000)
        page.fill("#line", "remember the blue door")
        page.click("#send")
        expect(page.locator("#transcript li.agent", has_text="I have heard carol")).to_be_visible(timeout=30_000)
        wait_until(lambda: room_pid(box, "crash-room"), 20, "the room's process in status")
        pid = room_pid(box, "crash-room")
        assert pid is not None

        os.kill(pid, signal.SIGKILL)
        expect(page.locator("#agent-state")).to_have_attribute("data-state", "resumed", timeout=60_000)
        notes = page.locator("#transcript li.note")
        expect(notes).to_have_count(2, timeout=10_000)
        assert notes.evaluate_all("(ns) => ns.map((n) => n.dataset.note)") == ["redispatching", "resumed"]
        expect(notes.first).to_contain_text("(killed)")
        resume_greeting = box.settings.worker.resume_greeting
        expect(page.locator("#transcript li.agent", has_text=resume_greeting)).to_be_visible(timeout=30_000)
        assert room_pid(box, "crash-room") not in (None, pid)
        carol.close()


def test_the_page_says_when_no_agent_is_there_and_when_one_comes(box: InstalledAppliance) -> None:
    box.supervisor().stop("worker", timeout_s=60)
    try:
        with chromium() as browser:
            dan = Person(browser)
            log_in_and_join(dan, console_url(box), "empty-room", "dan")
            state = dan.page.locator("#agent-state")
            expect(state).to_have_attribute("data-state", "absent")
            expect(state).to_contain_text("The agent is absent")
            box.supervisor().start("worker")
            expect(state).to_have_attribute("data-state", "present", timeout=60_000)
            expect(dan.page.locator("#transcript li.agent").first).to_contain_text("Hello!", timeout=30_000)
            dan.close()
    finally:
        if box.supervisor().process("worker").state != "RUNNING":
            box.supervisor().start("worker")
