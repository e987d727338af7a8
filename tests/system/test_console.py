"""The web console's doors, over HTTP as a browser (or an attacker) would knock: login, its throttle, CSRF and
cross-site requests, one-time links (expiry, reuse, tampering), and the scope of the tokens it mints (LiveKit itself
refuses one for another room). The page in a real browser: tests/browser."""

from __future__ import annotations

import asyncio
import io
import re
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from livekit import rtc

from appliance.console_assets import Lock
from harness.appliance import LIVEKIT_CLIENT_TGZ, InstalledAppliance

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def box() -> Iterator[InstalledAppliance]:
    installed = InstalledAppliance()
    installed.write_config()
    try:
        installed.install()
        installed.run("console", "passwd", stdin=PASSWORD + "\n")
        yield installed
    finally:
        installed.close()


def base(box: InstalledAppliance) -> str:
    return f"http://127.0.0.1:{box.settings.console.port}"


@pytest.fixture
async def browser(box: InstalledAppliance) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies for the console's own address, as a browser does, and sends its Origin."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address
    async with aiohttp.ClientSession(cookie_jar=jar, headers={"Origin": base(box)}) as session:
        yield session


async def login(
    session: aiohttp.ClientSession, box: InstalledAppliance, password: str = PASSWORD
) -> aiohttp.ClientResponse:
    return await session.post(f"{base(box)}/login", data={"password": password}, allow_redirects=False)


async def csrf_of(session: aiohttp.ClientSession, box: InstalledAppliance) -> str:
    page = await (await session.get(f"{base(box)}/")).text()
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found, page
    return found[1]


async def token(session: aiohttp.ClientSession, box: InstalledAppliance, csrf: str, room: str, identity: str) -> Any:
    return await session.post(f"{base(box)}/api/token", json={"room": room, "identity": identity},
                              headers={"X-CSRF-Token": csrf})  # fmt: skip


async def test_the_page_its_bundle_and_a_login(box: InstalledAppliance, browser: aiohttp.ClientSession) -> None:
    first = await browser.get(f"{base(box)}/")
    assert first.status == 200 and 'action="/login"' in await first.text()
    assert "default-src 'self'" in first.headers["Content-Security-Policy"]
    assert first.headers["X-Frame-Options"] == "DENY"
    planted = await (await browser.get(f"{base(box)}/?error=call+0800+123+now")).text()
    assert "call 0800" not in planted  # the page says only its own messages
    bundle = await (await browser.get(f"{base(box)}/static/livekit-client.umd.js")).read()
    with tarfile.open(fileobj=io.BytesIO(LIVEKIT_CLIENT_TGZ.read_bytes())) as archive:
        member = archive.extractfile(Lock.read().member)
        assert member is not None and bundle == member.read()  # the locked version's, from the box

    answer = await login(browser, box)
    assert answer.status == 303 and answer.headers["Location"] == "/"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain http here
    page = await (await browser.get(f"{base(box)}/")).text()
    assert 'id="join"' in page
    settings = box.settings
    secrets = [settings.livekit.api_secret, settings.console.secret_key, settings.console.password_hash]
    for secret in secrets:
        assert secret is not None and secret.get_secret_value() not in page
    assert PASSWORD not in (box.etc / "secrets.toml").read_text()  # only its hash is kept


async def test_a_token_is_for_one_room_and_identity_and_livekit_holds_it_to_that(
    box: InstalledAppliance, browser: aiohttp.ClientSession
) -> None:
    await login(browser, box)
    csrf = await csrf_of(browser, box)
    answer = await token(browser, box, csrf, "console-room", "alice")
    assert answer.status == 200
    granted = await answer.json()
    claims = jwt.decode(granted["token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["video"]["room"] == "console-room"
    assert claims["exp"] - time.time() <= box.settings.console.token_ttl_s + 5
    # The token names its room and identity; one changed by its holder no longer matches its signature, and
    # LiveKit refuses it.
    for claim, value in (("room", "another-room"), ("sub", "mallory")):
        with pytest.raises(rtc.ConnectError):
            await rtc.Room().connect(granted["url"], forged(granted["token"], claim, value), box.room_options())
    room = rtc.Room()
    await room.connect(granted["url"], granted["token"], box.room_options())
    assert (room.name, room.local_participant.identity) == ("console-room", "alice")
    await room.disconnect()


def forged(token: str, claim: str, value: str) -> str:
    """``token`` with a claim changed by its holder, who cannot sign it with the API secret."""
    claims = jwt.decode(token, options={"verify_signature": False})
    if claim == "room":
        claims["video"]["room"] = value
    else:
        claims[claim] = value
    return jwt.encode(claims, "not-the-api-secret-but-just-as-long", algorithm="HS256")


async def test_requests_from_another_site_or_without_the_csrf_token_are_refused(
    box: InstalledAppliance, browser: aiohttp.ClientSession
) -> None:
    await login(browser, box)
    csrf = await csrf_of(browser, box)
    evil = {"Origin": "http://attacker.example"}
    assert (await browser.post(f"{base(box)}/login", data={"password": PASSWORD}, headers=evil,
                               allow_redirects=False)).status == 403  # fmt: skip
    refused = await browser.post(f"{base(box)}/api/token", json={"room": "r", "identity": "i"},
                                 headers={**evil, "X-CSRF-Token": csrf})  # fmt: skip
    assert refused.status == 403 and "cross-site" in (await refused.json())["error"]
    no_csrf = await browser.post(f"{base(box)}/api/token", json={"room": "r", "identity": "i"})
    assert no_csrf.status == 403 and "CSRF" in (await no_csrf.json())["error"]
    async with aiohttp.ClientSession() as stranger:  # no session cookie at all
        answer = await stranger.post(f"{base(box)}/api/token", json={"room": "r", "identity": "i"},
                                     headers={"Origin": base(box), "X-CSRF-Token": csrf})  # fmt: skip
        assert answer.status == 401


async def test_repeated_wrong_passwords_are_slowed(box: InstalledAppliance, browser: aiohttp.ClientSession) -> None:
    for _ in range(3):
        wrong = await login(browser, box, "not the password at all")
        assert wrong.status == 303 and wrong.headers["Location"] == "/?error=wrong-password"
    slowed = await login(browser, box, PASSWORD)  # even the right one waits its turn
    assert slowed.status == 429 and int(slowed.headers["Retry-After"]) >= 1
    assert "too many wrong passwords: try again in" in await slowed.text()  # the login page, saying so
    await asyncio.sleep(1.2)
    assert (await login(browser, box)).status == 303  # after the wait, the right password works and clears it
    assert (await login(browser, box, "wrong again, once")).status == 303


async def test_a_link_lets_one_person_into_one_room_once(box: InstalledAppliance) -> None:
    url = box.run("console", "link", "link-room", "--identity", "bob").stdout.strip()
    assert url.startswith(f"{base(box)}/l/")
    path = url.removeprefix(base(box))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Origin": base(box)}) as bob:
        landing = await bob.get(f"{base(box)}{path}")
        assert landing.status == 200 and "link-room" in await landing.text()  # a GET uses nothing up
        used = await bob.post(f"{base(box)}{path}", allow_redirects=False)
        assert used.status == 303
        csrf = await csrf_of(bob, box)
        assert (await token(bob, box, csrf, "link-room", "bob")).status == 200
        assert (await token(bob, box, csrf, "other-room", "bob")).status == 403
        assert (await token(bob, box, csrf, "link-room", "mallory")).status == 403
    async with aiohttp.ClientSession(headers={"Origin": base(box)}) as second:
        again = await second.post(f"{base(box)}{path}", allow_redirects=False)
        assert again.status == 403 and "used already" in await again.text()
        tampered = await second.post(f"{base(box)}{path[:-3]}abc", allow_redirects=False)
        assert tampered.status == 403 and "not valid" in await tampered.text()


async def test_an_expired_link_is_refused(box: InstalledAppliance) -> None:
    url = box.run("console", "link", "late-room", "--ttl", "1s").stdout.strip()
    await asyncio.sleep(1.5)
    async with aiohttp.ClientSession(headers={"Origin": base(box)}) as late:
        answer = await late.post(url, allow_redirects=False)
        assert answer.status == 403 and "expired" in await answer.text()


def test_nothing_secret_in_the_consoles_log(box: InstalledAppliance) -> None:
    logs = box.run("logs", "console", "-n", "200", check=False)
    text = logs.stdout + logs.stderr
    assert "logged in" in text
    settings = box.settings
    for secret in (settings.console.secret_key, settings.console.password_hash, settings.livekit.api_secret):
        assert secret is not None and secret.get_secret_value() not in text
    assert PASSWORD not in text


async def test_behind_a_tls_proxy_on_the_box_the_cookie_is_secure(box: InstalledAppliance) -> None:
    """A proxy on this box (Caddy, nginx) terminating TLS says so with X-Forwarded-Proto: the cookie is then
    Secure; the same header from elsewhere would not count (only a loopback peer is trusted), nor is it needed."""
    async with aiohttp.ClientSession(headers={"Origin": base(box), "X-Forwarded-Proto": "https"}) as proxied:
        answer = await login(proxied, box)
        assert answer.status == 303 and "Secure" in answer.headers["Set-Cookie"]
