"""Guards in front of the HTTP services, before any route, token check or body parser runs.

``BodyLimit``: a body whose declared length is over the limit is refused (413) before a byte of it is read, so a
huge upload costs neither memory nor time, token or not; a body of undeclared length is refused (411).
``LoopbackHosts``: a service listening on loopback without a token answers only requests addressed to a loopback
name. A web page the user opens can make the browser send requests to 127.0.0.1 under its own host name (DNS
rebinding); those carry that name in ``Host`` and are refused (400).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """An address or name that only this machine reaches."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


class BodyLimit:
    """``setting``: the name of the service's setting for the limit, which the refusal names."""

    def __init__(self, app: ASGIApp, max_bytes: int, setting: str):
        self.app, self.max_bytes, self.setting = app, max_bytes, setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            if length is None and b"transfer-encoding" in headers:
                return await _refuse(scope, receive, send, 411, "request body: send it with a Content-Length header")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                return await _refuse(
                    scope,
                    receive,
                    send,
                    413,
                    f"request body: {length.decode()} bytes is over the limit of {self.max_bytes} ({self.setting})",
                )
        await self.app(scope, receive, send)


class LoopbackHosts:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = urlsplit(f"//{host}").hostname or ""
            if not is_loopback(name):
                return await _refuse(
                    scope,
                    receive,
                    send,
                    400,
                    f"Host: {host!r} is not a loopback name; this service answers only on this machine",
                )
        await self.app(scope, receive, send)
