"""The API's listener below the application: malformed requests, slow headers, TLS with certificate reload.

aiohttp answers a request it cannot parse with a text body quoting the offending bytes (which can be an
``Authorization`` line) and waits for headers as long as a connection stays open. Here:

- a request that does not parse gets the API's JSON error (400), logged by error type only, never
  echoing what was sent;
- a request's headers must arrive complete within ``header_timeout`` of the connection opening, or of
  the request's first byte on a kept-alive connection; otherwise the connection is closed (slowloris);
- with ``server.tls``, the certificate chain and key are re-read when either file changes, checked on
  every TLS handshake, so a renewed certificate is served to new connections without a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from rotator import logs
from rotator.errors import ConfigError

log = logs.get("rotator.api")

# Sent instead of aiohttp's "Python/x.y aiohttp/x.y.z": it names no software version.
SERVER_HEADER = "rotator"


def error_response(status: int, error: str, *, detail: Any = None) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if detail is not None:
        body["detail"] = detail
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/json", headers={"Server": SERVER_HEADER}
    )


class _Protocol(RequestHandler):
    """aiohttp's per-connection handler with a header deadline and JSON protocol errors."""

    __slots__ = ("_header_deadline", "_header_timeout")

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None

    def _waiting_for_headers(self) -> bool:
        """No request is queued or being handled: what arrives now is (part of) the next request's head."""
        return not self._messages and not self._request_in_progress and self._current_request is None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self._loop.call_later(self._header_timeout, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_overdue(self) -> None:
        self._header_deadline = None
        if self.transport is not None and self._waiting_for_headers():
            log.warning("http.header_timeout", timeout_s=self._header_timeout)
            self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # the first request's head is due from the moment the connection opens

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_headers():
            self._arm()
        super().data_received(data)
        if self._messages:  # a complete head (or a parse error) arrived
            self._disarm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # The exception's text and `message` quote the raw bytes received: only the type is kept.
        log.warning("http.protocol_error", error=type(exc).__name__ if exc else str(status))
        if status == 400:
            response = error_response(400, "the request could not be parsed", detail={"error": type(exc).__name__})
        else:
            response = error_response(status, "internal error")
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's low-level server, making our ``_Protocol`` for each connection."""

    def __init__(self, inner: web.Server, *, header_timeout: float, handler_kwargs: dict[str, Any]) -> None:
        super().__init__(
            inner.request_handler,
            request_factory=inner.request_factory,
            handler_cancellation=inner.handler_cancellation,
            loop=asyncio.get_running_loop(),
        )
        self._protocol_kwargs = dict(handler_kwargs, header_timeout=header_timeout)

    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=asyncio.get_running_loop(), **self._protocol_kwargs)


class HardenedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use ``_Protocol``; ``handler_kwargs`` go to each connection's handler
    (logger, access_log, ...) as AppRunner's own keyword arguments would."""

    def __init__(
        self, app: web.Application, *, header_timeout: float, shutdown_timeout: float, **handler_kwargs: Any
    ) -> None:
        super().__init__(app, handle_signals=False, shutdown_timeout=shutdown_timeout, **handler_kwargs)
        self._header_timeout = header_timeout
        self._handler_kwargs = handler_kwargs

    async def _make_server(self) -> web.Server:
        inner = await super()._make_server()  # runs the application's start-up and freezes it
        return _Server(inner, header_timeout=self._header_timeout, handler_kwargs=self._handler_kwargs)


async def drop_server_banner(_: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: replace aiohttp's version banner (set only when the header is absent)."""
    response.headers["Server"] = SERVER_HEADER


# -- TLS ------------------------------------------------------------------------------------------------


def _signature(*paths: Path) -> tuple[tuple[int, int, int, int], ...] | None:
    try:
        stats = [os.stat(p) for p in paths]  # follows the symlinks a mounted Secret swaps on update
    except OSError:
        return None
    return tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


def _context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class ReloadingTls:
    """The listener's SSL context. Every handshake checks the files' signatures (a stat each); when they
    changed, a new context is loaded and the handshake switched to it. A pair that does not load (the
    certificate replaced but not yet its key) is logged and the previous one kept until the files change again."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._signature = _signature(cert_file, key_file)
        try:
            self._current = _context(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"server.tls: cannot load cert_file {cert_file} with key_file {key_file}: {_why(exc)}; "
                "give a PEM certificate chain and its PEM private key"
            ) from None
        self.context = _context(cert_file, key_file)  # the listening one; handshakes move to _current
        self.context.sni_callback = self._on_client_hello
        self.reloads = 0

    def current(self) -> ssl.SSLContext:
        signature = _signature(self.cert_file, self.key_file)
        if signature is not None and signature != self._signature:
            self._signature = signature
            try:
                self._current = _context(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                log.warning("api.tls.reload_failed", cert_file=str(self.cert_file), error=_why(exc))
            else:
                self.reloads += 1
                log.info("api.tls.reloaded", cert_file=str(self.cert_file))
        return self._current

    def _on_client_hello(self, connection: ssl.SSLObject, _server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self.current()


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    return type(exc).__name__ if not isinstance(exc, OSError) else (exc.strerror or type(exc).__name__)
