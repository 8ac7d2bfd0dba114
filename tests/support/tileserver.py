"""A local HTTP tile server in a thread: an upstream for the http renderer, and a cache
that answers ``PURGE`` the way Varnish does (200 if the tile was cached, 404 if not).

It records every request, so tests can check what the render worker sent and when.
Nothing is mocked: the worker talks HTTP to a real socket.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from render.jobs import RenderJob
from render.renderers import BuiltinRenderer

_TILE = re.compile(r"^/(\d+)/(\d+)/(\d+)\.\w+$")


@dataclass
class Request:
    method: str
    path: str
    at: float  # time.time()
    status: int


@dataclass
class TileServer:
    """``GET /{z}/{x}/{y}.png`` renders a PNG unless ``z`` is in ``failing_zooms`` (500);
    ``PURGE`` answers 200 for a path in ``cached`` (and forgets it), 404 otherwise, or
    ``purge_status`` when that is set; ``purge_delay_s`` holds each PURGE that long;
    ``on_purge(path)`` runs as each PURGE arrives (to look at the store at that moment)."""

    failing_zooms: set[int] = field(default_factory=set)
    cached: set[str] = field(default_factory=set)
    purge_status: int | None = None
    purge_delay_s: float = 0.0
    on_purge: Callable[[str], None] | None = None
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self
        renderer = BuiltinRenderer()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"") -> None:
                owner.requests.append(Request(self.command, self.path, time.time(), status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                m = _TILE.match(self.path)
                if m is None:
                    return self._answer(404)
                z, x, y = (int(g) for g in m.groups())
                if z in owner.failing_zooms:
                    return self._answer(500, b"upstream broken")
                job = RenderJob("WebMercatorQuad", z, x, y, 1)
                return self._answer(200, renderer.render(job))

            def do_PURGE(self) -> None:
                if owner.on_purge is not None:
                    owner.on_purge(self.path)
                if owner.purge_delay_s:
                    time.sleep(owner.purge_delay_s)
                if owner.purge_status is not None:
                    return self._answer(owner.purge_status)
                if self.path in owner.cached:
                    owner.cached.discard(self.path)
                    return self._answer(200)
                return self._answer(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def sent(self, method: str) -> list[Request]:
        return [r for r in list(self.requests) if r.method == method]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> TileServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
