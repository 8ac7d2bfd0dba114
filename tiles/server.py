"""Running the tile server: checks first, then uvicorn.

:func:`prepare` turns the usual mistakes (a store that is not there, a ledger that does
not answer, a port in use) into one line before anything is served.
"""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

import uvicorn

from tilepipe.config import settings_from_flags
from tilepipe.errors import ConfigError
from tilepipe.serving import DrainingServer, bind, drop_color_message
from tiles.app import TileServer, create_app
from tiles.settings import TilesSettings
from tiles.store import LedgerVersions, open_reader

log = logging.getLogger("tilepipe.tiles")


def prepare(settings: TilesSettings) -> tuple[TileServer, socket.socket]:
    """Check the store, the ledger and the port; raises :class:`ConfigError`."""
    reader = open_reader(settings.store, settings.format)
    kind, _, path = settings.store.partition(":")
    if kind == "dir" and not Path(path).is_dir():
        raise ConfigError(
            f"store {settings.store!r}: no such directory; point --store at the render"
            " workers' store (TILEPIPE_TILES_STORE)"
        )
    versions = None
    if settings.ledger is not None:
        versions = LedgerVersions(settings.ledger.get_secret_value())
        try:
            versions.open()
            versions.check()
        except Exception as e:
            versions.close()
            raise ConfigError(
                f"the render ledger does not answer ({str(e).splitlines()[0]}); check --ledger"
                " (TILEPIPE_TILES_LEDGER or TILEPIPE_RENDER_LEDGER)"
            ) from None
    for spec in settings.static:
        _, sep, directory = spec.partition("=")
        if not sep or not Path(directory).is_dir():
            raise ConfigError(f"static {spec!r}: expected PREFIX=DIRECTORY with a directory")
    log_file = None
    if settings.request_log is not None:
        log_file = settings.request_log.open("a", buffering=1, encoding="utf-8")
    sock = bind(settings.listen)
    return TileServer(settings, reader, versions, log_file), sock


def serve(settings: TilesSettings) -> int:
    server, sock = prepare(settings)
    config = uvicorn.Config(
        create_app(server),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,  # --request-log is the access log, one JSON line per tile
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    uv = DrainingServer(config)
    logging.getLogger("uvicorn.error").addFilter(drop_color_message)
    log.info(
        "tiles on http://%s from %s (%s)",
        settings.listen,
        settings.store,
        "versions from the ledger" if server.versions else "no ledger: nothing immutable",
    )
    uv.run(sockets=[sock])
    return 0 if uv.started else 1


def tiles_command(args: argparse.Namespace) -> int:
    """``tilepipe tiles``: flags over ``TILEPIPE_TILES_*`` variables over defaults."""
    from tilepipe.logs import setup_logging

    settings = settings_from_flags(TilesSettings, args)
    setup_logging(settings.log_level)
    return serve(settings)
