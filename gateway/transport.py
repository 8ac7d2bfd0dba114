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
import socket
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

    async def flushed(self, timeout: float) -> None:
        """Wait until the buffer is empty (then the kernel delivers the rest), or cut the socket.

        Closing with data still buffered would drop it under uvloop, close frame included.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._transport.get_write_buffer_size() and not self._transport.is_closing():
            if loop.time() > deadline:
                self._transport.abort()
                return
            await asyncio.sleep(0.05)

    def force_close(self, code: int, reason: str, last: bytes | None, grace: float) -> None:
        """WebSocket: ``last`` as a text frame and a close frame with ``code``, past the buffer.

        The caller then awaits :meth:`flushed` before its handler returns. For a
        plain HTTP response (SSE) there is no close frame: the socket is cut at
        once, and EventSource reconnects with ``Last-Event-ID``.
        """
        t = self._transport
        if t.is_closing():
            return
        p = self._ws
        if p is None:
            t.abort()
            return
        if p.close_sent:  # uvicorn is closing it already (e.g. its ping went unanswered)
            return
        try:
            if last is not None:
                p.conn.send_text(last)
            p.conn.send_close(code, reason)
        except Exception:  # the protocol state says it is past closing: cut it
            t.abort()
            return
        t.write(b"".join(p.conn.data_to_send()))
        p.close_sent = True
        p.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})


def protocols(write_buffer_high: int, send_buffer: int = 0) -> tuple[type[Any], type[Any]]:
    """uvicorn ``http`` and ``ws`` protocol classes with the gateway's socket control.

    ``send_buffer`` > 0 fixes each socket's kernel send buffer (``SO_SNDBUF``), which
    otherwise grows to ``tcp_wmem``'s maximum (4 MiB) for a client that stops reading.
    """

    class HttpProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=write_buffer_high)
            sock = transport.get_extra_info("socket")
            if send_buffer > 0 and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)

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

        async def send(self, message: Any) -> None:
            await super().send(message)
            if message["type"] == "websocket.accept" and self.handshake_complete:
                # The handshake's request and response (headers: ~3 KiB) are not needed
                # again; most of a gateway's connections are idle, so this is per-connection
                # memory that only ever sits there.
                self.request = self.response = None  # type: ignore[assignment]

    return HttpProtocol, WebSocketProtocol
