"""What the gateway needs of uvicorn's sockets that ASGI does not give: the buffer and a hard close.

ASGI's ``send`` waits while a socket's write buffer is over its high-water
mark, which is the back-pressure the writer wants, but it offers no way to
close a client that stopped reading: the close frame would queue behind the
full buffer forever, and the peer's zero TCP window keeps the connection
alive. These two small subclasses of uvicorn's protocols set the high-water
mark to ``write_buffer_high`` and put a :class:`SocketControl` into the ASGI
scope (``scope["extensions"]["tilepipe.socket"]``): it writes a last frame
and the close frame past the buffer, and cuts the socket after a grace
period if the client still does not read them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "tilepipe.socket"


class SocketControl:
    def __init__(self, transport: asyncio.Transport, ws: Any = None) -> None:
        self._transport = transport
        self._ws = ws

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    def force_close(self, code: int, reason: str, last: bytes | None, grace: float) -> None:
        """WebSocket: ``last`` as a text frame and a close frame with ``code``, then cut.

        For a plain HTTP response (SSE) there is no close frame: the socket is
        cut at once, and EventSource reconnects with ``Last-Event-ID``.
        """
        t = self._transport
        if t.is_closing():
            return
        p = self._ws
        if p is None:
            t.abort()
            return
        if not p.close_sent:
            if last is not None:
                p.conn.send_text(last)
            p.conn.send_close(code, reason)
            t.write(b"".join(p.conn.data_to_send()))
            p.close_sent = True
            p.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        asyncio.get_running_loop().call_later(grace, t.abort)


def protocols(write_buffer_high: int) -> tuple[type[Any], type[Any]]:
    """uvicorn ``http`` and ``ws`` protocol classes with the gateway's socket control."""

    class HttpProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=write_buffer_high)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            extensions: dict[str, Any] = {EXTENSION: SocketControl(self.transport)}
            self.scope["extensions"] = extensions  # type: ignore[typeddict-item]

    class WebSocketProtocol(WebSocketsSansIOProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.transport.set_write_buffer_limits(high=write_buffer_high)

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None:
                scope["extensions"][EXTENSION] = SocketControl(self.transport, self)  # type: ignore[literal-required]

    return HttpProtocol, WebSocketProtocol
