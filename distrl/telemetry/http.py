"""The HTTP server under the dashboard and Prometheus' `/metrics`: bounded, timed out, and
behind a reader token when one is configured.

- A connection has `request_timeout_s` to deliver its request line, headers and body (a
  slowloris that trickles bytes is dropped at that deadline), and every later write waits at
  most as long, so a client that stops reading a long response (the dashboard's event stream)
  is dropped too.
- At most `max_connections` connections are served at once, each on a daemon thread; one more
  is answered 503 at once from the accept loop and closed.
- With a reader token, every request carries `Authorization: Bearer TOKEN` or the cookie that
  `/login` sets (an HMAC of the token, never the token itself); anything else gets a 401 that
  says how to log in. Without one (the default, for 127.0.0.1) every request is served.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import io
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, parse_qs, urlparse

log = logging.getLogger(__name__)

READER_TOKEN_ENV = "DISTRL_READER_TOKEN_FILE"
READER_COOKIE = "distrl_reader"
MAX_LOGIN_BODY = 4096

__all__ = [
    "READER_COOKIE",
    "READER_TOKEN_ENV",
    "BoundedHTTPServer",
    "HttpLimits",
    "ReaderAuth",
    "ReaderHandler",
    "read_reader_token",
]


def read_reader_token(path: Path | str) -> str:
    """The reader token in `path` (surrounding whitespace stripped); ValueError when it is empty."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the reader token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise ValueError(f"the reader token file {path} is empty")
    return token


class ReaderAuth:
    """Who may read: a request with the token as a bearer credential, or with the login cookie."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("a reader token cannot be empty")
        self._token = token.encode()
        # The cookie is derived from the token: it survives a restart of the server, yet a
        # leaked cookie does not reveal the token.
        self.cookie_value = hmac.new(self._token, b"distrl reader session", hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def allows(self, headers: Mapping[str, str]) -> bool:
        scheme, _, credential = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credential.strip()):
            return True
        cookie = _cookie(headers.get("Cookie") or "", READER_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie_value.encode())


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


@dataclass(frozen=True)
class HttpLimits:
    """How long a connection may take to send its request, and how many are served at once."""

    request_timeout_s: float = 30.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        if self.request_timeout_s <= 0 or self.max_connections < 1:
            raise ValueError(f"bad HTTP limits: {self}")


_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 28\r\nConnection: close\r\n\r\ntoo many connections, retry\n"
)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with `limits` and an optional reader token (see the module doc)."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[ReaderHandler],
        *,
        limits: HttpLimits | None = None,
        reader_token: str | None = None,
        what: str = "HTTP",
    ) -> None:
        self.limits = limits or HttpLimits()
        self.auth = ReaderAuth(reader_token) if reader_token is not None else None
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        super().__init__(address, handler)
        if self.auth is None and not _loopback(address[0]):
            log.warning(
                "%s on %s:%s serves without a reader token: anyone who can reach it reads the run "
                "(give --reader-token-file)",
                what,
                address[0],
                self.server_address[1],
            )

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def serve_in_thread(self, name: str) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        thread.start()
        return thread


def _refuse(sock: socket.socket) -> None:
    """Answer 503 without ever blocking the accept loop."""
    try:
        sock.setblocking(False)
        try:  # read what the client already sent, so closing does not reset the connection
            sock.recv(65536)
        except OSError:
            pass
        sock.send(_BUSY)
    except OSError:
        pass


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _DeadlineReader(io.RawIOBase):
    """Reads `sock` until `deadline` (monotonic) at the latest, however slowly bytes arrive."""

    def __init__(self, sock: socket.socket, deadline: float, op_timeout: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._op_timeout = op_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request was not read in time")
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._op_timeout)


class ReaderHandler(BaseHTTPRequestHandler):
    """One request of a `BoundedHTTPServer`: the read deadline, the token check and `/login`.

    Subclasses implement `serve_get(url)`, called only for an allowed request.
    """

    server: BoundedHTTPServer

    def setup(self) -> None:
        self.timeout = self.server.limits.request_timeout_s  # every write, and the reads below
        super().setup()
        self.rfile.close()
        deadline = time.monotonic() + self.timeout
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline, self.timeout))

    def serve_get(self, url: ParseResult) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/login":
            token = parse_qs(url.query).get("token", [None])[0]
            self._login(token)
        elif self.server.auth is not None and not self.server.auth.allows(self.headers):
            self._unauthorized()
        else:
            self.serve_get(url)

    def do_POST(self) -> None:
        if urlparse(self.path).path != "/login":
            self.send_body(405, b"only /login takes a POST\n", "text/plain; charset=utf-8")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_LOGIN_BODY:
            self.send_body(400, b"bad login form\n", "text/plain; charset=utf-8")
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        self._login(form.get("token", [None])[0])

    def _login(self, token: str | None) -> None:
        auth = self.server.auth
        if auth is None:
            self.send_body(303, b"", "text/plain", {"Location": "./"})
        elif token is None:
            self.send_body(200, _login_page("", "login"), "text/html; charset=utf-8")
        elif not auth.token_matches(token.strip()):
            page = _login_page("Wrong token.", "login")
            self.send_body(401, page, "text/html; charset=utf-8", _CHALLENGE)
        else:
            # Redirect so the token leaves the address bar (and the history's last entry).
            cookie = f"{READER_COOKIE}={auth.cookie_value}; Path=/; HttpOnly; SameSite=Strict"
            self.send_body(303, b"", "text/plain", {"Location": "./", "Set-Cookie": cookie})

    def _unauthorized(self) -> None:
        if "text/html" in (self.headers.get("Accept") or ""):
            # The form posts to /login relative to this page, so it also works under a proxy's prefix.
            login = "../" * (urlparse(self.path).path.count("/") - 1) + "login"
            body, content_type = _login_page("", login), "text/html; charset=utf-8"
        else:
            body, content_type = _UNAUTHORIZED_TEXT, "text/plain; charset=utf-8"
        self.send_body(401, body, content_type, _CHALLENGE)

    def send_body(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the console


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="distrl"', "Cache-Control": "no-store"}
_UNAUTHORIZED_TEXT = (
    b"401: this server needs its reader token. Send 'Authorization: Bearer TOKEN', "
    b"or in a browser open /login?token=TOKEN (or /login for a form).\n"
)


def _login_page(message: str, action: str) -> bytes:
    note = f"<p>{html.escape(message)}</p>" if message else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>distrl: log in</title></head>"
        "<body style='font-family: sans-serif; margin: 3em'>"
        f"<h1>distrl</h1>{note}<p>This server needs its reader token.</p>"
        f"<form method='post' action='{html.escape(action)}'><input type='password' name='token' autofocus "
        "placeholder='reader token' size='40'> <button type='submit'>Log in</button></form>"
        "</body></html>"
    ).encode()
