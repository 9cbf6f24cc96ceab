"""The HTTP edge: JSON errors, bearer tokens, CORS, early 413, and logs that leak nothing.

- Every error on an API route is JSON `{"error"}`: aiohttp's own 404/405/413 and any
  unexpected exception (a 500 that names no internals; the traceback goes to the log once).
- With tokens configured, `/offer`, `/whip`, `/sessions` and `/metrics` need
  `Authorization: Bearer <token>` (constant-time compare). Session resources (hang-up,
  resume) need the session's own secret instead, given only to the call's creator.
- CORS: only origins in the allow-list get CORS headers and preflight answers.
- `Expect: 100-continue` with a body over the limit gets 413 before the body is sent.
- Access log lines do not carry session secrets; a malformed HTTP request is one INFO line.
- Nothing a client sends can break or forge a log line: every string from the request that
  is logged (method, path, address, user agent, error texts quoting the request) goes through
  `logctx.escape`.
- A request whose body could not be read (a `Content-Encoding` that does not decode) is
  answered with `Connection: close`: aiohttp closes that connection after the answer, and a
  client must not send its next request on it.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError

from agent.call.logctx import escape
from signaling.config import ServerConfig

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROTECTED = ("/offer", "/whip", "/sessions", "/metrics")
SESSION_HEADER = "X-Session-Secret"
BODY_TIMEOUT_S = 5.0  # a request body must have arrived by then (408)
ALLOW_HEADERS = f"Content-Type, Authorization, {SESSION_HEADER}"


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _is_api(path: str) -> bool:
    return not (path == "/" or path.startswith("/static"))


def _protected(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PROTECTED)


def _session_resource(path: str) -> bool:
    """Resources authorised by the session's secret, not the bearer token."""
    return path.startswith("/session/") or (path.count("/") >= 2 and path.startswith("/whip/"))


def bearer_ok(request: web.Request, tokens: tuple[str, ...]) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    # Compare with every token, always: the time taken says nothing about which matched.
    matches = [hmac.compare_digest(given.strip().encode(), t.encode()) for t in tokens]
    return any(matches)


def middlewares(config: ServerConfig) -> list[Middleware]:
    origins = frozenset(config.cors_origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        allowed = origin in origins and _is_api(request.path)
        if (
            allowed
            and request.method == "OPTIONS"
            and "Access-Control-Request-Method" in request.headers
        ):
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, PATCH, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Location, Retry-After"
            response.headers["Vary"] = "Origin"
        return response

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            config.auth_tokens
            and request.method != "OPTIONS"
            and _protected(request.path)
            and not _session_resource(request.path)
            and not bearer_ok(request, config.auth_tokens)
        ):
            return json_error(
                401,
                "authentication required: send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="ringback"'},
            )
        return await handler(request)

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if not _is_api(request.path) or exc.status < 400:
                raise
            if exc.status == 413:
                limit = config.max_body_bytes
                return json_error(413, f"request body too large: the limit is {limit} bytes")
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return json_error(exc.status, exc.reason or "error", headers=headers)
        except ConnectionResetError:
            log.info(
                "client went away during %s %s", escape(request.method), mask_secrets(request.path)
            )
            return json_error(400, "connection lost")  # nobody left to read it
        except Exception:
            log.exception(
                "unhandled error on %s %s", escape(request.method), mask_secrets(request.path)
            )
            return json_error(500, "internal error (logged on the server)")

    @web.middleware
    async def close_after_bad_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        # aiohttp drops a connection whose request body failed to decode (or did not arrive)
        # once the answer is out; say so in the answer, or the client reuses a dead socket.
        if request.content.exception() is not None or response.status == 408:
            response.force_close()
        return response

    # Outermost first: CORS headers go on every answer, errors included.
    return [cors, close_after_bad_body, json_errors, auth]


def expect_handler(max_body_bytes: int) -> Callable[[web.Request], Awaitable[None]]:
    """aiohttp answers `100 Continue` to any body; refuse one over the limit instead (413)."""

    async def expect(request: web.Request) -> None:
        if request.version == (1, 1) and "Expect" in request.headers:
            if request.headers["Expect"].lower() != "100-continue":
                raise web.HTTPExpectationFailed(text="unsupported Expect header")
            if (request.content_length or 0) > max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=max_body_bytes, actual_size=request.content_length or 0
                )
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0

    return expect


_SECRET_PATH = re.compile(r"^(/whip/[^/?]+/)[^/?]+")


def mask_secrets(path: str) -> str:
    """A request path fit for a log line: a WHIP resource's secret masked, the rest escaped
    (logctx.escape: a decoded `%0a` must not start a new line)."""
    return escape(_SECRET_PATH.sub(r"\1…", path))


class AccessLogger(AbstractAccessLogger):
    """One line per request: WHIP resource secrets masked, everything from the client
    escaped (a `%0a` in a path is a `\x0a` in the log, not a new line)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.1f ms "%s"',
            escape(request.remote or "-"),
            escape(request.method, 20),
            mask_secrets(request.path),
            response.status,
            time * 1000,
            escape(request.headers.get("User-Agent", "-"), 120),
        )


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a malformed request as a 10-line ERROR traceback: make it one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError):  # a body left unread that does not decode
            exc = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
        if (
            isinstance(exc, HttpProcessingError | RequestPayloadError)
            and record.levelno >= logging.ERROR
        ):
            message = str(exc)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "malformed HTTP request: %s"
            record.args = (escape(" ".join(str(message).split())),)
            record.exc_info = None
            record.exc_text = None
        return True


def install_log_filters() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
