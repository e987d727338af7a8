"""The console's web app: one page, a login, one-time links and a token endpoint (aiohttp).

Every state-changing request is a POST from the console's own origin (Origin checked) carrying the session's CSRF
token in a header or form field; the session is a signed, HttpOnly, SameSite=Strict cookie (Secure behind TLS).
Tokens it mints are LiveKit join tokens for one room and one identity, short-lived.
"""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from agent.store.records import InvalidMessage, check_id
from appliance.console.auth import Grant, Signer, Throttle, UsedLinks, session_grant, session_token, verify_password
from appliance.errors import ApplianceError
from appliance.layout import Layout
from appliance.settings import ApplianceSettings
from appliance.tokens import join_token

log = logging.getLogger("appliance.console")
COOKIE = "console_session"
STATIC = Path(__file__).parent / "static"
# What the login page may say after a redirect: a code, never text from the address (no message planted by a link).
LOGIN_ERRORS = {"wrong-password": "wrong password"}
CLIENT_JS = "livekit-client.umd.js"


class Console:
    def __init__(self, settings: ApplianceSettings, layout: Layout) -> None:
        c = settings.console
        if c.secret_key is None:
            raise ApplianceError("console.secret_key: unset (`appliance install` makes one in secrets.toml)")
        self.settings = settings
        self.signer = Signer(c.secret_key.get_secret_value().encode())
        self.throttle = Throttle()
        self.used = UsedLinks(layout.data_dir / "console" / "used-links")
        self.livekit_url = c.livekit_url or settings.livekit.url
        self.assets = c.assets_dir
        lk = urlsplit(self.livekit_url)
        media = f"{lk.scheme}://{lk.netloc} {'https' if lk.scheme == 'wss' else 'http'}://{lk.netloc}"
        self.security_headers = {
            "Content-Security-Policy": f"default-src 'self'; connect-src 'self' {media}; media-src 'self' blob:;"
            " img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            # Not no-referrer: with it, a browser sends "Origin: null" on the page's own form posts.
            "Referrer-Policy": "same-origin",
        }

    # --- the app ---------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/", self.page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/l/{token}", self.link_page)
        app.router.add_post("/l/{token}", self.link_use)
        app.router.add_post("/api/token", self.token)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/favicon.ico", _no_icon)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(self.security_headers)
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    # --- who is asking ---------------------------------------------------------------------------------------

    def grant_of(self, request: web.Request) -> Grant | None:
        token = request.cookies.get(COOKIE)
        return session_grant(self.signer, token) if token else None

    def _same_origin(self, request: web.Request) -> bool:
        """A browser sends Origin with every POST; it must be the console's own (the Host it was asked at)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return False
        return urlsplit(origin).netloc == request.host

    def _secure(self, request: web.Request) -> bool:
        """HTTPS as the browser sees it: directly, or through a TLS proxy on this box that says so."""
        forwarded = request.headers.get("X-Forwarded-Proto", "")
        return request.secure or (forwarded == "https" and request.remote in ("127.0.0.1", "::1"))

    def _start_session(self, request: web.Request, response: web.StreamResponse, grant: Grant) -> None:
        response.set_cookie(
            COOKIE,
            session_token(self.signer, grant),
            max_age=int(grant.expires_at - time.time()),
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
            path="/",
        )

    def _forbidden(self, why: str) -> web.Response:
        return web.json_response({"error": why}, status=403)

    # --- handlers --------------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        grant = self.grant_of(request)
        if grant is None:
            return _html("login.html", error=LOGIN_ERRORS.get(request.query.get("error", ""), ""))
        return _html("console.html", csrf=grant.csrf, room=grant.room, identity=grant.identity, kind=grant.kind)

    async def login(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            return self._forbidden("cross-site request refused")
        address = request.remote or "?"
        wait = self.throttle.wait_s(address)
        if wait > 0:
            seconds = int(wait) + 1
            return _html("login.html", status=429, headers={"Retry-After": str(seconds)},
                         error=f"too many wrong passwords: try again in {seconds} s")  # fmt: skip
        form = await request.post()
        stored = self.settings.console.password_hash
        password = str(form.get("password", ""))
        ok = stored is not None and await asyncio.to_thread(verify_password, password, stored.get_secret_value())
        if not ok:
            self.throttle.failed(address)
            log.warning("console: a wrong password from %s", address)
            raise web.HTTPSeeOther("/?error=wrong-password")
        self.throttle.succeeded(address)
        response = web.HTTPSeeOther("/")
        ttl = self.settings.console.session_ttl_s
        self._start_session(request, response, Grant("operator", time.time() + ttl, secrets.token_urlsafe(24)))
        log.info("console: the operator logged in from %s", address)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            return self._forbidden("cross-site request refused")
        response = web.HTTPSeeOther("/")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def link_page(self, request: web.Request) -> web.Response:
        """A link's landing page: a button that uses it (a GET changes nothing: a chat app's preview of the link
        does not use it up)."""
        payload = self.signer.unsign("link", request.match_info["token"])
        if payload is None:
            return _html("login.html", status=403, error="this link is not valid or has expired")
        return _html("link.html", room=payload["room"], identity=payload["identity"])

    async def link_use(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            return self._forbidden("cross-site request refused")
        payload = self.signer.unsign("link", request.match_info["token"])
        if payload is None:
            return _html("login.html", status=403, error="this link is not valid or has expired")
        if not self.used.use(str(payload["nonce"]), float(payload["exp"])):
            return _html("login.html", status=403, error="this link was used already")
        grant = Grant("link", float(payload["exp"]) + self.settings.console.session_ttl_s, secrets.token_urlsafe(24),
                      str(payload["room"]), str(payload["identity"]))  # fmt: skip
        response = web.HTTPSeeOther("/")
        self._start_session(request, response, grant)
        log.info("console: a link for room %s used by %s", grant.room, request.remote)
        raise response

    async def token(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            return self._forbidden("cross-site request refused")
        grant = self.grant_of(request)
        if grant is None:
            return web.json_response({"error": "log in first"}, status=401)
        if not secrets.compare_digest(request.headers.get("X-CSRF-Token", ""), grant.csrf):
            return self._forbidden("missing or wrong CSRF token")
        try:
            body = await request.json()
            room, identity = str(body["room"]), str(body["identity"])
            check_id("room", room)
            check_id("identity", identity)
        except (ValueError, KeyError, TypeError, InvalidMessage) as exc:
            return web.json_response({"error": f"room and identity: {exc}"}, status=400)
        if not grant.allows(room, identity):
            return self._forbidden(f"this session is for room {grant.room} as {grant.identity}")
        ttl = timedelta(seconds=self.settings.console.token_ttl_s)
        minted = join_token(self.settings.livekit, room, identity, ttl=ttl)
        return web.json_response({"url": self.livekit_url, "token": minted.token, "room": room, "identity": identity})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == CLIENT_JS:
            path = self.assets / CLIENT_JS
        elif name in ("console.js", "console.css"):
            path = STATIC / name
        else:
            raise web.HTTPNotFound()
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def _no_icon(_: web.Request) -> web.Response:
    return web.Response(status=204)


def _html(name: str, *, status: int = 200, headers: dict[str, str] | None = None, **values: str) -> web.Response:
    """A page of static/, its {placeholders} filled with escaped values (no secret is ever one of them)."""
    text = (STATIC / name).read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", html.escape(value, quote=True))
    return web.Response(text=text, status=status, headers=headers, content_type="text/html")
