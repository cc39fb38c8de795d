"""The HTTP side of the one port: static files of ``web_client/`` and the gate
in front of the control websocket.

Loopback only unless ``server.allow_remote``; a random token (printed in the
URL, as Jupyter does) guards the websocket; a browser's Origin must be the
page's own. Everything else is a 404.
"""

from __future__ import annotations

import email.utils
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from live.config import LOOPBACK_HOSTS

WEB_ROOT = Path(__file__).resolve().parents[2] / "web_client"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# The page may talk only to this server; the token in its URL must not leak
# to anyone else through a Referer.
PAGE_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; "
                                "media-src 'self' blob: mediastream:; connect-src 'self'; "
                                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
]
TOKEN_REFUSED = (b"Unauthorized: missing or wrong token; open the URL that `live serve` "
                 b"printed (it ends with ?token=...)\n")


class HttpGate:
    """Answers plain HTTP requests and decides whether a websocket upgrade may proceed."""

    def __init__(self, token: str, web_root: Path = WEB_ROOT, allow_remote: bool = False,
                 operator_token: str | None = None):
        self.token = token
        self.operator_token = operator_token  # also opens the socket (with more rights)
        self.web_root = web_root.resolve()
        self.allow_remote = allow_remote

    def answer(self, conn: ServerConnection, request: Request) -> Response | None:
        """The response to ``request``, or None to let the websocket upgrade through."""
        path, _, query = request.path.partition("?")
        if path == "/ws-check":
            return self._check_token(query)
        if path != "/ws":
            return self._static(path)
        if not self._origin_allowed(request):
            return conn.respond(403, "Forbidden: this page's origin may not use the control "
                                     "socket\n")
        if not self._token_ok(query):
            return conn.respond(401, TOKEN_REFUSED.decode())
        return None

    def _token_ok(self, query: str) -> bool:
        return self.is_operator(query) or _same(query, self.token)

    def is_operator(self, query: str) -> bool:
        """Whether the query's token is the operator's (steers every session)."""
        return self.operator_token is not None and _same(query, self.operator_token)

    def _check_token(self, query: str) -> Response:
        """``GET /ws-check?token=...``: 200 or 401, so the page can tell a stale link
        (the token changes at every start) from a server that is not there; a
        browser sees only code 1006 when the websocket upgrade is refused."""
        if self._token_ok(query):
            return response(200, b"ok\n", "text/plain; charset=utf-8")
        return response(401, TOKEN_REFUSED, "text/plain; charset=utf-8")

    def _origin_allowed(self, request: Request) -> bool:
        """No Origin = not a browser (the token suffices); a browser must be same-origin.

        Same-origin alone would let a DNS-rebinding page through (its Origin and
        Host would both say evil.example), so on loopback the host must also be
        a loopback name.
        """
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        if origin != f"http://{request.headers.get('Host', '')}":
            return False
        return self.allow_remote or urlsplit(origin).hostname in LOOPBACK_HOSTS

    def _static(self, path: str) -> Response:
        not_found = response(404, b"Not found\n", "text/plain; charset=utf-8")
        rel = unquote(path).lstrip("/") or "index.html"
        if "\x00" in rel or ".." in rel.replace("\\", "/").split("/"):
            return not_found
        try:
            target = (self.web_root / rel).resolve()
            if not target.is_relative_to(self.web_root) or not target.is_file() \
                    or target.suffix not in CONTENT_TYPES:
                return not_found
            return response(200, target.read_bytes(), CONTENT_TYPES[target.suffix])
        except (OSError, ValueError):
            return not_found


def _same(query: str, token: str) -> bool:
    given = parse_qs(query).get("token", [""])[0]
    return secrets.compare_digest(given.encode(), token.encode())


def response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Length", str(len(body))), ("Content-Type", content_type),
                       *PAGE_HEADERS])
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}[status]
    return Response(status, reason, headers, body)
