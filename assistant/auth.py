"""Who is calling: sign-in, sessions, API keys and roles, for the page and the API alike.

With no users in the database and the server bound to the loopback address, the caller is the
single local owner, an admin, and nobody signs in (the README's first command). Otherwise
every page and API call needs a session cookie (from /login) or `Authorization: Bearer <key>`,
and every action checks the caller's role on the server: hiding a button is not enough,
since the page's events are also callable through its API.
"""

import html
import ipaddress
import json

from fastapi import FastAPI, Form, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from assistant.config import ThrottleConfig
from assistant.throttle import Refused, Throttle
from storage import Home, open_db, users

COOKIE = "flywheel_session"
LOCAL = {"id": None, "name": "local", "role": "admin"}  # the owner of a fresh local install


class Forbidden(PermissionError):
    """The caller may not do this; the message is safe to show."""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Auth:
    def __init__(self, home: Home, host: str, session_hours: float = 12.0,
                 throttle: Throttle | None = None):
        self.home = home
        self.loopback = is_loopback(host)
        self.session_hours = session_hours
        self.throttle = throttle or Throttle(ThrottleConfig())

    def caller(self, request) -> dict | None:
        """The user behind a request (session cookie or bearer key), LOCAL when nobody needs
        to sign in, None when the caller is unknown."""
        with open_db(self.home, keep=True) as db:  # on every request: a kept connection
            if not users.auth_enabled(db):
                return LOCAL if self.loopback else None
            token = request.cookies.get(COOKIE)
            if token:
                user = users.user_for_session(db, token)
                if user:
                    return user
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return users.user_for_key(db, key.strip())
        return None

    def gradio_user(self, request) -> str | None:
        """For Gradio's `auth_dependency`: the caller's name, or None (then a 401)."""
        user = self.caller(request)
        return user["name"] if user else None

    def user_named(self, name: str | None) -> dict:
        """The current row of a user Gradio names (re-read on every event: a user disabled
        or demoted a moment ago loses access at once)."""
        if name in (None, LOCAL["name"]):
            with open_db(self.home) as db:
                if not users.auth_enabled(db) and self.loopback:
                    return LOCAL
            raise Forbidden("sign in first")
        with open_db(self.home) as db:
            user = users.get_user(db, name)
        if user is None or user["disabled"]:
            raise Forbidden("this account is disabled or gone; sign in again")
        return user

    @staticmethod
    def require(user: dict, role: str) -> None:
        if users.RANK[user["role"]] < users.RANK[role]:
            raise Forbidden(f"this needs the {role} role; you are a {user['role']}")

    def install(self, app: FastAPI) -> None:
        """/login, /logout (a POST: a link or an image cannot sign anyone out), a redirect to
        /login for a signed-out visit to the page, and the API schema for signed-in callers."""
        app.add_middleware(_ToLogin, auth=self)

        @app.get("/login", response_class=HTMLResponse)
        def login_page(error: str = "") -> str:
            return _LOGIN.format(error=html.escape(error))

        @app.post("/login")
        def login(request: Request, username: str = Form(..., max_length=200),
                  password: str = Form(..., max_length=1000)):
            address = request.client.host if request.client else "?"
            try:
                # Refused before any hashing: a flood of guesses costs no memory or CPU.
                self.throttle.check_sign_in(username.strip(), address)
                with self.throttle.hashing(), open_db(self.home) as db:
                    try:
                        user = users.check_password(db, username.strip(), password)
                    except users.AccountDisabled:
                        return RedirectResponse(
                            "/login?error=This+account+is+disabled%3B+ask+an+admin",
                            status_code=303)
                    if user is None:
                        self.throttle.failed_sign_in(username.strip(), address)
                        return RedirectResponse("/login?error=Wrong+name+or+password",
                                                status_code=303)
                    token = users.start_session(db, user["id"], self.session_hours)
            except Refused as exc:
                return HTMLResponse(_LOGIN.format(error=html.escape(str(exc))),
                                    status_code=exc.status,
                                    headers={"Retry-After": str(exc.retry_after)})
            response = RedirectResponse("/", status_code=303)
            # Strict: no other site's page can make the browser send it (CSRF).
            response.set_cookie(COOKIE, token, max_age=int(self.session_hours * 3600),
                                httponly=True, samesite="strict")
            return response

        @app.post("/logout")
        def logout(request: Request):
            token = request.cookies.get(COOKIE)
            if token:
                with open_db(self.home) as db:
                    users.end_session(db, token)
            response = RedirectResponse("/login", status_code=303)
            response.delete_cookie(COOKIE)
            return response

        @app.get("/openapi.json", include_in_schema=False)
        def schema(request: Request):
            if self.caller(request) is None:
                return JSONResponse({"detail": "sign in first"}, status_code=401)
            return app.openapi()

        @app.get("/docs", include_in_schema=False)
        def docs(request: Request):
            if self.caller(request) is None:
                return RedirectResponse("/login", status_code=303)
            return get_swagger_ui_html(openapi_url="/openapi.json", title="Flywheel API")


class _ToLogin:
    """Sends a signed-out visit to the page to /login. Plain ASGI rather than FastAPI's
    @app.middleware("http"), which wraps every request and response in streams and a task
    group: that wrapper cost more than a feedback write."""

    def __init__(self, app, auth: Auth):
        self.app, self.auth = app, auth

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/"
                and self.auth.caller(Request(scope)) is None):
            await RedirectResponse("/login", status_code=303)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class PageApiForRole:
    """Gradio's /gradio_api/info, the listing that `gradio_client` and "Use via API" read,
    names every endpoint of the page; a caller is shown only those their role may call
    (`roles`: endpoint name -> least role, from `ui.endpoint_roles`). Plain ASGI, as
    `_ToLogin`: Gradio builds the listing, this takes out what is not the caller's."""

    PATHS = ("/gradio_api/info", "/gradio_api/info/")

    def __init__(self, app, auth: Auth, roles: dict[str, str]):
        self.app, self.auth, self.roles = app, auth, roles

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            await self.app(scope, receive, send)
            return
        start, body = {}, []

        async def keep(message):
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        payload = b"".join(body)
        user = self.auth.caller(Request(scope))
        if start.get("status") == 200 and user is not None and user["role"] != "admin":
            rank = users.RANK[user["role"]]
            listing = json.loads(payload)
            listing["named_endpoints"] = {
                path: about for path, about in listing.get("named_endpoints", {}).items()
                if users.RANK[self.roles.get(path.lstrip("/"), "admin")] <= rank}
            listing["unnamed_endpoints"] = {}  # the page's own events, by number: not an API
            payload = json.dumps(listing).encode()
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})


_LOGIN = """<!doctype html><html><head><meta charset="utf-8"><title>Sign in · Flywheel</title>
<style>body{{font-family:system-ui,sans-serif;display:grid;place-items:center;height:100vh;
margin:0;background:#f6f6f7}}form{{background:#fff;padding:2rem;border-radius:12px;
box-shadow:0 2px 12px #0001;display:grid;gap:.8rem;width:18rem}}input,button{{font:inherit;
padding:.55rem;border:1px solid #ccc;border-radius:8px}}button{{background:#f97316;color:#fff;
border:0}}.error{{color:#b91c1c}}</style></head><body>
<form method="post" action="/login"><h2>Flywheel</h2><div class="error">{error}</div>
<input name="username" placeholder="Name" autocomplete="username" required autofocus>
<input name="password" type="password" placeholder="Password" autocomplete="current-password"
 required><button type="submit">Sign in</button></form></body></html>"""
