"""The HTTP edge's defences, applied to every request before any route or the page sees it.

- Host allow-list: a server bound to the loopback address answers only to loopback names
  (localhost, 127.0.0.1, [::1]). A hostile web page that rebinds its own domain to 127.0.0.1
  (DNS rebinding) sends its own name as Host, so it is refused before it can use a local
  install that trusts every caller.
- Origin check: a state-changing request (POST, PUT, PATCH, DELETE) that a browser sends
  from another site carries that site's Origin, and is refused (CSRF). Clients that are not
  browsers (curl, `openai`, `gradio_client`) send no Origin and pass.
- Body size: a body over `max_body_bytes` is refused with 413 before it is read in full.
- Headers: the page may not be framed by another site (clickjacking) nor sniffed.

Written as plain ASGI middleware (not a library) because it must see the raw body stream
and every response, the page's included; each check is a few lines.
"""

import json
from urllib.parse import urlsplit

from starlette.datastructures import Headers

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def host_name(host: str) -> str:
    """'127.0.0.1:7860' -> '127.0.0.1', '[::1]:80' -> '::1', 'Example.com' -> 'example.com'."""
    return (urlsplit(f"//{host}").hostname or "").lower()


class Guard:
    """ASGI middleware: Host allow-list, Origin check, body size, security headers."""

    def __init__(self, app, *, loopback: bool, allowed_hosts: tuple[str, ...] = (),
                 max_body_bytes: int = 1 << 20):
        self.app = app
        # Bound to loopback: loopback names only (plus any the admin adds, e.g. a proxy's).
        self.hosts = (LOOPBACK_NAMES | {h.lower() for h in allowed_hosts}) if loopback else None
        self.origins = {h.lower() for h in allowed_hosts}  # a proxy that rewrites Host
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return await _refuse(scope, send, 403, f"host {host_name(host)!r} is not allowed "
                                 "here (this server answers to loopback names only)",
                                 "host_not_allowed")
        origin = headers.get("origin")
        changes_state = scope["type"] == "websocket" or scope["method"] in STATE_CHANGING
        if changes_state and origin is not None and not self._same_site(origin, host):
            return await _refuse(scope, send, 403, "cross-site request refused: its Origin is "
                                 "not this server", "cross_origin")
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            length = headers.get("content-length")
            if length is None:  # chunked: read it here, up to the limit, then hand it on
                body = await self._read_bounded(receive)
                if body is None:
                    return await _refuse(scope, send, 413, self._too_big(), "body_too_large")
                receive = _replay(body, receive)
            elif not length.isdigit() or int(length) > self.max_body_bytes:
                return await _refuse(scope, send, 413, self._too_big(), "body_too_large")
        await self.app(scope, receive, self._with_headers(send))

    def _same_site(self, origin: str, host: str) -> bool:
        """The page that sent it came from this server (or from a name the admin allowed)."""
        netloc = urlsplit(origin).netloc.lower()
        return netloc == host.lower() or host_name(netloc) in self.origins

    def _too_big(self) -> str:
        return f"the request body is over the limit of {self.max_body_bytes} bytes (max_body_bytes)"

    async def _read_bounded(self, receive) -> bytes | None:
        """The whole body, or None once it passes the limit (the rest is never read)."""
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_body_bytes:
                return None
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    def _with_headers(send):
        async def sending(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", []))
                           + SECURITY_HEADERS}
            await send(message)
        return sending


def _replay(body: bytes, receive):
    """An ASGI receive that gives `body` once, then waits on the real one (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _refuse(scope, send, status: int, message: str, code: str) -> None:
    """An OpenAI-shaped error (what API clients parse; readable in a browser too)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())] + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})
