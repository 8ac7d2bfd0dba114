"""Every dead-letter reason code, named once.

A :class:`~tilepipe.records.DeadLetter`'s ``reason`` is one of these, whoever
built it: the validate stage, the wire models, the geometry checks, the cover,
the sinks' per-update guard, or the ingress (which answers with the same codes
the dataflow would dead-letter with). The README's "Dead letters" list is
checked against this enum by ``tests/unit/test_reasons.py`` in both
directions, so a new code cannot ship undocumented. See ``docs/ARCHITECTURE.md``
for the stages that emit them.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """A stable dead-letter reason code; a ``str``, so it serializes and labels as its value.

    ``(str, Enum)`` rather than ``StrEnum`` because the project still runs on
    Python 3.10; ``__str__`` makes ``str()``, ``format()`` and Prometheus labels
    the bare code on every version.
    """

    # Decoding and the record as a whole (stage 1).
    EMPTY_RECORD = "empty_record"
    TOO_LARGE = "too_large"
    BAD_SIGNATURE = "bad_signature"
    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    # The schema (stage 2): pydantic's own error types folded into these...
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_KIND = "unknown_kind"
    # ... and the wire models' own checks (tilepipe/wire.py, tilepipe/geometry.py).
    INVALID_VERSION = "invalid_version"
    INVALID_TIMESTAMP = "invalid_timestamp"
    FUTURE_EVENT = "future_event"
    UNSUPPORTED_TMS = "unsupported_tms"
    TILE_OUT_OF_RANGE = "tile_out_of_range"
    BBOX_MISMATCH = "bbox_mismatch"
    ZOOM_OUT_OF_RANGE = "zoom_out_of_range"
    TOO_MANY_FIELDS = "too_many_fields"
    INVALID_GEOJSON = "invalid_geojson"
    EMPTY_GEOMETRY = "empty_geometry"
    INVALID_COORDINATES = "invalid_coordinates"
    TOO_MANY_VERTICES = "too_many_vertices"
    INVALID_GEOMETRY = "invalid_geometry"
    # The sinks' per-update guard (sinks/guard.py).
    ENCODE_FAILED = "encode_failed"
    """An update the sink could not turn into its message (or job)."""
    SINK_REJECTED = "sink_rejected"
    """An update the destination refused for itself, with an error that is not an outage."""
    # The ingress only: a request's records not reached within its check deadline.
    CHECK_DEADLINE = "check_deadline"
    # A bug of ours, which must not lose the record either.
    INTERNAL_ERROR = "internal_error"
    EXPANSION_FAILED = "expansion_failed"

    def __str__(self) -> str:
        return self.value
