"""Who may talk to the server: loopback by default, a token for anything else, GET/HEAD only.

The token is random (:func:`secrets.token_urlsafe`), printed once inside the URL, and compared in constant
time (:func:`hmac.compare_digest`). A page opened with ``?token=...`` gets it as an HttpOnly, SameSite=Strict
cookie, so its own requests (the WebSocket, EventSource, ``<video>`` and ``<track>``) carry it without the
token ever being put into the page, and ``Referrer-Policy: no-referrer`` keeps the URL out of other sites'
logs.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from drivecap.errors import ConfigError

COOKIE = "drivecap_token"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Read by the browser on every response: the server only serves its own files and never frames others.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_bind(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port), or a one-line ConfigError."""
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = default_host, text
    host = host.strip("[]") or default_host
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"--serve {text!r}: give PORT or HOST:PORT with a port 0-65535, e.g. --serve 8080")
    return host, port


def resolve_token(host: str, token: str | None) -> str | None:
    """The token the server will ask for: the one given, a new random one off loopback, else none."""
    if token is not None:
        if len(token) < 16:
            raise ConfigError(
                "--token is too short: use at least 16 characters (or leave it out for a random one)"
            )
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def _supplied(request: web.Request) -> tuple[str | None, bool]:
    """The token a request carries and whether it came in the query string (then it becomes a cookie)."""
    q = request.query.get("token")
    if q:
        return q, True
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip(), False
    return request.cookies.get(COOKIE), False


def make_guard(token: str | None) -> Middleware:
    """The middleware: read-only methods, the token when one is set, security headers on every answer."""
    expected = token.encode() if token else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"], headers=SECURITY_HEADERS)
        from_query = False
        if expected is not None:
            given, from_query = _supplied(request)
            if given is None or not hmac.compare_digest(given.encode(), expected):
                raise web.HTTPUnauthorized(
                    text="drivecap: this server needs its token: open the URL it printed (with ?token=...)\n",
                    headers=SECURITY_HEADERS,
                )
        resp = await handler(request)
        if not resp.prepared:  # streams set their headers themselves before the first byte
            resp.headers.update(SECURITY_HEADERS)
            if from_query and token:
                resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return resp

    return guard
