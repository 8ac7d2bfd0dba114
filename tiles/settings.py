"""The tile server's settings: ``TILEPIPE_TILES_<NAME>`` environment variables.

``tilepipe tiles`` flags override them. The ledger is the render workers' own
(``TILEPIPE_RENDER_LEDGER`` is read when ``TILEPIPE_TILES_LEDGER`` is not set), so
one Secret configures both.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from tilepipe.config import SharedSettings
from tilepipe.serving import Listen


class TilesSettings(SharedSettings):
    """``TILEPIPE_TILES_<NAME>``; the log level is every service's ``TILEPIPE_LOG_LEVEL``."""

    model_config = SettingsConfigDict(env_prefix="TILEPIPE_TILES_")

    listen: Listen = "127.0.0.1:8091"
    """``HOST:PORT`` to serve tiles on."""
    store: str = "dir:./tiles"
    """The render workers' store: ``dir:PATH`` ({z}/{x}/{y}.{format}) or ``mbtiles:PATH``."""
    format: str = "png"
    """Tile format and extension: ``png``, ``jpg``, ``webp``, ``mvt`` or ``pbf``."""
    ledger: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TILEPIPE_TILES_LEDGER", "TILEPIPE_RENDER_LEDGER"),
    )
    """PostgreSQL DSN of the render ledger: the committed version of each tile
    (``render_tiles``). Without it no URL is immutable: versioned ones are answered like
    bare ones (``no-cache`` + ETag)."""
    tms: str = "WebMercatorQuad"
    request_log: Path | None = None
    """Append one JSON line per tile request here (time, tile, v, h, status, cache)."""
    cors_origins: str = "*"
    """``Access-Control-Allow-Origin`` (maps fetch tiles cross-origin); empty: no header."""
    static: list[str] = []
    """``PREFIX=DIRECTORY`` pairs served as static files (the demo page, node_modules)."""

    @field_validator("store")
    @classmethod
    def _check_store(cls, v: str) -> str:
        kind, _, path = v.partition(":")
        if kind not in ("dir", "mbtiles") or not path:
            raise ValueError(f"store {v!r}: expected dir:PATH or mbtiles:PATH")
        return v

    @field_validator("format")
    @classmethod
    def _check_format(cls, v: str) -> str:
        if v not in CONTENT_TYPES:
            raise ValueError(f"format {v!r}: one of {', '.join(CONTENT_TYPES)}")
        return v


CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "mvt": "application/vnd.mapbox-vector-tile",
    "pbf": "application/x-protobuf",
}
