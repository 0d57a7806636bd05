"""The contract every emulator meets so the sandbox server can host it."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web


class Emulator(Protocol):
    """One emulated service, served on its own port."""

    name: str

    def setup(self, app: web.Application) -> None:
        """Add the service's routes to ``app`` (its own application)."""

    def error_response(self, status: int, message: str, *, retry_after: int | None = None) -> web.Response:
        """An error in this service's own wire shape (used by injected faults too)."""

    def admin_routes(self) -> list[web.RouteDef]:
        """Extra test-control routes, served on the admin port under ``/<name>/``."""

    def dump(self) -> dict[str, Any]:
        """State to persist in ``--state-dir``."""

    def load(self, data: dict[str, Any]) -> None:
        """Restore what ``dump`` returned."""


def json_error(status: int, body: Any, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or None when it is not JSON (callers answer in their own shape)."""
    try:
        return await request.json(loads=_strict_loads)
    except ValueError:
        return None


def _strict_loads(text: str) -> Any:
    import json

    return json.loads(text)


class Context:
    """What an emulator is built from: the seed, the signer, every service's URL, its peers."""

    def __init__(self, *, seed: Any, signer: Any, urls: dict[str, str], files_dir: Any) -> None:
        self.seed = seed
        self.signer = signer
        self.urls = urls
        self.files_dir = files_dir
        self.peers: dict[str, Any] = {}
