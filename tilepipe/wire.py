"""Wire format v1: the pydantic models that are the schema of record.

Every producer-facing check lives here, so the dataflow and the HTTP ingress
reject the same records with the same reason codes. Custom checks raise
``PydanticCustomError`` with a stable type, which becomes the DLQ ``reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

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
from pydantic_core import PydanticCustomError
from shapely.geometry.base import BaseGeometry

from tilepipe.geometry import GeometryError, check_geometry, from_geojson
from tilepipe.tiles import MAX_ZOOM, SUPPORTED_TMS, WEB_MERCATOR_QUAD, bbox_matches
from tilepipe.timeutil import parse_event_time
from tilepipe.versions import version_key

OWN_REASONS = frozenset(
    {"invalid_version", "invalid_timestamp", "unsupported_tms", "tile_out_of_range",
     "bbox_mismatch", "zoom_out_of_range", "invalid_geojson", "empty_geometry",
     "invalid_coordinates", "too_many_vertices", "invalid_geometry"}
)  # fmt: skip
"""Error types raised by these models; they are DLQ reason codes as they are."""


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    event_id: Annotated[str, Field(min_length=1, max_length=256)]
    version: int | str
    source: Annotated[str, Field(min_length=1, max_length=256)]
    ts: int | float | str
    tms: str = WEB_MERCATOR_QUAD
    layers: Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=64)] | None = (
        None
    )

    @field_validator("version", mode="before")
    @classmethod
    def _check_version(cls, v: Any) -> Any:
        try:
            version_key(v)
        except ValueError as e:
            raise PydanticCustomError("invalid_version", str(e)) from None
        return v

    @field_validator("ts", mode="before")
    @classmethod
    def _check_ts(cls, v: Any) -> Any:
        try:
            parse_event_time(v)
        except ValueError as e:
            raise PydanticCustomError("invalid_timestamp", str(e)) from None
        return v

    @field_validator("tms")
    @classmethod
    def _check_tms(cls, v: str) -> str:
        if v not in SUPPORTED_TMS:
            raise PydanticCustomError(
                "unsupported_tms",
                "tile matrix set '{tms}' is not supported (supported: {supported})",
                {"tms": v, "supported": ", ".join(sorted(SUPPORTED_TMS))},
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
                "tile_out_of_range",
                "z={z} is outside 0..{max}",
                {"z": self.z, "max": MAX_ZOOM, "field": "z"},
            )
        n = 1 << self.z
        for name, value in (("x", self.x), ("y", self.y)):
            if not 0 <= value < n:
                raise PydanticCustomError(
                    "tile_out_of_range",
                    "{name}={value} is outside 0..{last} at z={z}",
                    {"name": name, "value": value, "last": n - 1, "z": self.z, "field": name},
                )
        if self.bbox is not None and not bbox_matches(self.z, self.x, self.y, tuple(self.bbox)):
            raise PydanticCustomError(
                "bbox_mismatch",
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
    feature_id: Annotated[str, Field(min_length=1, max_length=256)]
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
                    "zoom_out_of_range",
                    "{name}={value} is above the configured limit {top}",
                    {"name": name, "value": value, "top": top, "field": name},
                )
        if self.minzoom is not None and self.maxzoom is not None and self.minzoom > self.maxzoom:
            raise PydanticCustomError(
                "zoom_out_of_range",
                "minzoom {lo} is above maxzoom {hi}",
                {"lo": self.minzoom, "hi": self.maxzoom, "field": "minzoom"},
            )
        return self


class TelemetryEventIn(_EventBase):
    """``kind: "telemetry"``: a sensor reading at a point; extra fields are the reading."""

    kind: Literal["telemetry"]
    sensor_id: Annotated[str, Field(min_length=1, max_length=256)]
    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]


AnyEventIn = Annotated[TileEventIn | FeatureEventIn | TelemetryEventIn, Field(discriminator="kind")]
EVENT_ADAPTER: TypeAdapter[TileEventIn | FeatureEventIn | TelemetryEventIn] = TypeAdapter(
    AnyEventIn
)
