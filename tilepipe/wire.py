"""Wire format v1: the pydantic models that are the schema of record.

Every producer-facing check lives here, so the dataflow and the HTTP ingress
reject the same records with the same reason codes. Custom checks raise
``PydanticCustomError`` with a stable type, which becomes the DLQ ``reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from shapely.geometry.base import BaseGeometry

from tilepipe.geometry import GeometryError, check_geometry, from_geojson
from tilepipe.reasons import Reason
from tilepipe.records import clip
from tilepipe.tiles import MAX_ZOOM, SUPPORTED_TMS, WEB_MERCATOR_QUAD, bbox_matches
from tilepipe.timeutil import parse_event_time
from tilepipe.versions import version_key

# The bounds of every field, named once: the models below and the msgspec fast
# path (operators/fastpath.py) apply these same numbers, and README's "Wire
# format v1" lists them. Versions are bounded by version_key
# (tilepipe/versions.py), which both paths call; ``ts`` by parse_event_time
# (tilepipe/timeutil.py: epoch milliseconds up to the year 9999, RFC 3339
# strings up to 64 characters).
MAX_ID_CHARS = 256
"""``event_id``, ``source``, ``feature_id`` and ``sensor_id``: 1 to this many characters."""
MAX_LAYERS = 64
MAX_LAYER_CHARS = 128
MAX_READING_FIELDS = 64
"""A telemetry reading's own fields (everything beyond the common ones)."""
MAX_READING_NAME_CHARS = 128
MAX_READING_VALUE_BYTES = 4096
"""One reading field's value, as JSON."""
MAX_QUOTE_CHARS = 64
"""How much of a received value an error message may quote."""


def quote(value: Any) -> str:
    """``repr(value)`` cut to :data:`MAX_QUOTE_CHARS`: what a message may echo of the input."""
    if isinstance(value, str) and len(value) > MAX_QUOTE_CHARS:
        return f"{value[:MAX_QUOTE_CHARS]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= MAX_QUOTE_CHARS else text[:MAX_QUOTE_CHARS] + "..."


def error_message(err: ErrorDetails) -> str:
    """A pydantic error's message, bounded: what a dead letter or a 422 may say.

    pydantic's own messages quote only the schema, except the union-tag one,
    which quotes the whole ``kind`` received; it is rebuilt from a quote.
    """
    if err["type"] == "union_tag_invalid":
        tag = quote((err.get("ctx") or {}).get("tag"))
        return f"kind {tag} is not one of 'tile', 'feature', 'telemetry'"
    return clip(err["msg"], 256)


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]

OWN_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.INVALID_VERSION,
        Reason.INVALID_TIMESTAMP,
        Reason.UNSUPPORTED_TMS,
        Reason.TILE_OUT_OF_RANGE,
        Reason.BBOX_MISMATCH,
        Reason.ZOOM_OUT_OF_RANGE,
        Reason.INVALID_GEOJSON,
        Reason.EMPTY_GEOMETRY,
        Reason.INVALID_COORDINATES,
        Reason.TOO_MANY_VERTICES,
        Reason.INVALID_GEOMETRY,
        Reason.TOO_MANY_FIELDS,
    }
)
"""Error types raised by these models; they are DLQ reason codes as they are."""


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    event_id: Id
    version: int | str
    source: Id
    ts: int | float | str
    tms: str = WEB_MERCATOR_QUAD
    layers: (
        Annotated[
            list[Annotated[str, Field(max_length=MAX_LAYER_CHARS)]], Field(max_length=MAX_LAYERS)
        ]
        | None
    ) = None

    @field_validator("version", mode="before")
    @classmethod
    def _check_version(cls, v: Any) -> Any:
        try:
            version_key(v)
        except ValueError as e:
            raise PydanticCustomError(Reason.INVALID_VERSION, str(e)) from None
        return v

    @field_validator("ts", mode="before")
    @classmethod
    def _check_ts(cls, v: Any) -> Any:
        try:
            parse_event_time(v)
        except ValueError as e:
            raise PydanticCustomError(Reason.INVALID_TIMESTAMP, str(e)) from None
        return v

    @field_validator("tms")
    @classmethod
    def _check_tms(cls, v: str) -> str:
        if v not in SUPPORTED_TMS:
            raise PydanticCustomError(
                Reason.UNSUPPORTED_TMS,
                "tile matrix set {tms} is not supported (supported: {supported})",
                {"tms": quote(v), "supported": ", ".join(sorted(SUPPORTED_TMS))},
            )
        return v


class TileEventIn(_EventBase):
    """``kind: "tile"``: one tile named directly."""

    kind: Literal["tile"]
    z: Annotated[int, Field(strict=True)]
    x: Annotated[int, Field(strict=True)]
    y: Annotated[int, Field(strict=True)]
    bbox: Annotated[list[float], Field(min_length=4, max_length=4)] | None = None

    @model_validator(mode="after")
    def _check_tile(self) -> TileEventIn:
        if not 0 <= self.z <= MAX_ZOOM:
            raise PydanticCustomError(
                Reason.TILE_OUT_OF_RANGE,
                "z={z} is outside 0..{max}",
                {"z": self.z, "max": MAX_ZOOM, "field": "z"},
            )
        n = 1 << self.z
        for name, value in (("x", self.x), ("y", self.y)):
            if not 0 <= value < n:
                raise PydanticCustomError(
                    Reason.TILE_OUT_OF_RANGE,
                    "{name}={value} is outside 0..{last} at z={z}",
                    {"name": name, "value": value, "last": n - 1, "z": self.z, "field": name},
                )
        if self.bbox is not None and not bbox_matches(self.z, self.x, self.y, tuple(self.bbox)):
            raise PydanticCustomError(
                Reason.BBOX_MISMATCH,
                "bbox {bbox} does not match the bounds of tile {z}/{x}/{y}",
                {"bbox": self.bbox, "z": self.z, "x": self.x, "y": self.y, "field": "bbox"},
            )
        return self


@dataclass(frozen=True)
class GeometryRules:
    """Settings-dependent geometry checks, passed as the validation context."""

    max_vertices: int = 100_000
    repair: bool = True
    max_zoom: int = 20


_DEFAULT_RULES = GeometryRules()


def _rules(info: ValidationInfo) -> GeometryRules:
    ctx = info.context
    return ctx if isinstance(ctx, GeometryRules) else _DEFAULT_RULES


def _geometry(value: Any, info: ValidationInfo) -> BaseGeometry:
    rules = _rules(info)
    try:
        return check_geometry(from_geojson(value), rules.max_vertices, rules.repair)
    except GeometryError as e:
        raise PydanticCustomError(e.reason, "{message}", {"message": e.message}) from None


Geometry = Annotated[BaseGeometry, PlainValidator(_geometry)]


class FeatureEventIn(_EventBase):
    """``kind: "feature"``: a feature mutation; expands to every tile it touches."""

    model_config = ConfigDict(extra="allow", frozen=True, arbitrary_types_allowed=True)

    kind: Literal["feature"]
    feature_id: Id
    op: Literal["upsert", "delete"]
    geometry: Geometry
    previous_geometry: Geometry | None = None
    minzoom: Annotated[int, Field(strict=True, ge=0, le=MAX_ZOOM)] | None = None
    maxzoom: Annotated[int, Field(strict=True, ge=0, le=MAX_ZOOM)] | None = None
    buffer: Annotated[float, Field(ge=0, le=1024, allow_inf_nan=False)] = 0.0

    @model_validator(mode="after")
    def _check_zooms(self, info: ValidationInfo) -> FeatureEventIn:
        top = _rules(info).max_zoom
        for name in ("minzoom", "maxzoom"):
            value = getattr(self, name)
            if value is not None and value > top:
                raise PydanticCustomError(
                    Reason.ZOOM_OUT_OF_RANGE,
                    "{name}={value} is above the configured limit {top}",
                    {"name": name, "value": value, "top": top, "field": name},
                )
        if self.minzoom is not None and self.maxzoom is not None and self.minzoom > self.maxzoom:
            raise PydanticCustomError(
                Reason.ZOOM_OUT_OF_RANGE,
                "minzoom {lo} is above maxzoom {hi}",
                {"lo": self.minzoom, "hi": self.maxzoom, "field": "minzoom"},
            )
        return self


class TelemetryEventIn(_EventBase):
    """``kind: "telemetry"``: a sensor reading at a point; extra fields are the reading."""

    kind: Literal["telemetry"]
    sensor_id: Id
    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _check_reading(self) -> TelemetryEventIn:
        reading = self.model_extra or {}
        if len(reading) > MAX_READING_FIELDS:
            raise PydanticCustomError(
                Reason.TOO_MANY_FIELDS,
                "a reading has {n} fields, over the {max} allowed",
                {"n": len(reading), "max": MAX_READING_FIELDS},
            )
        for name, value in reading.items():
            if len(name) > MAX_READING_NAME_CHARS:
                raise PydanticCustomError(
                    Reason.INVALID_VALUE,
                    "a reading field's name is {n} characters, over the {max} allowed",
                    {"n": len(name), "max": MAX_READING_NAME_CHARS, "field": name[:64]},
                )
            try:
                size = len(orjson.dumps(value))
            except TypeError:  # an integer beyond 64 bits: no consumer could read it
                size = MAX_READING_VALUE_BYTES + 1
            if size > MAX_READING_VALUE_BYTES:
                raise PydanticCustomError(
                    Reason.INVALID_VALUE,
                    "reading field {name} is over {max} bytes as JSON (or not encodable)",
                    {"name": quote(name), "max": MAX_READING_VALUE_BYTES, "field": name[:64]},
                )
        return self


AnyEventIn = Annotated[TileEventIn | FeatureEventIn | TelemetryEventIn, Field(discriminator="kind")]
EVENT_ADAPTER: TypeAdapter[TileEventIn | FeatureEventIn | TelemetryEventIn] = TypeAdapter(
    AnyEventIn
)
