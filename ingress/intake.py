"""From a request body to records checked with the dataflow's own rules.

A body is one event (``application/json``) or a batch, one event a line
(``application/x-ndjson``). Each record is checked by
:func:`operators.validate.validate_record`, the function the dataflow's
validate stage runs, so the ingress rejects exactly what the dataflow would
dead-letter, with the same reason codes. No I/O here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from operators.validate import ValidationConfig, validate_record
from tilepipe.reasons import Reason
from tilepipe.records import DeadLetter, FanOutEvent, RawRecord, TileEvent
from tilepipe.wire import EVENT_ADAPTER, GeometryRules

BodyKind = Literal["json", "ndjson"]

_MEDIA_TYPES: dict[str, BodyKind] = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson",
}
ACCEPTED_MEDIA_TYPES = ("application/json", "application/x-ndjson")

# Records that are not JSON objects at all are a bad request; JSON objects that break
# the schema are unprocessable; one record over the size limit is too large.
_STATUS = {Reason.INVALID_JSON: 400, Reason.NOT_AN_OBJECT: 400, Reason.INVALID_ENCODING: 400,
           Reason.EMPTY_RECORD: 400, Reason.TOO_LARGE: 413, Reason.CHECK_DEADLINE: 413}  # fmt: skip
MAX_FIELD_ERRORS = 20
# How long one request's records may take to check. Each record is bounded on
# its own (a geometry repair by tilepipe.geometry.REPAIR_BUDGET_S), so a request
# answers within this plus one record's budget; the records not reached are
# rejected (413 ``check_deadline``), nothing of them is produced.
CHECK_DEADLINE_S = 5.0


def body_kind(content_type: str | None) -> BodyKind | None:
    """What a ``Content-Type`` announces; ``None`` if the ingress does not take it."""
    media, _, params = (content_type or "").partition(";")
    kind = _MEDIA_TYPES.get(media.strip().lower())
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return None
    return kind


def split_records(body: bytes, kind: BodyKind) -> list[bytes]:
    """The records of a body: itself, or its non-blank lines (``\\r\\n`` allowed)."""
    if kind == "json":
        return [body]
    lines = (line.removesuffix(b"\r") for line in body.split(b"\n"))
    return [line for line in lines if line.strip()]


@dataclass(frozen=True, slots=True)
class Checked:
    """One record of a request, checked."""

    index: int
    value: bytes
    event_id: str | None  # None when rejected
    key: str | None
    """The Kafka key: the tile partition key ``{z}:{quadkey}`` of a tile event; for
    features and sensors, their object (``feature:{source}:{id}``), whose versions
    the dataflow orders."""
    rejection: DeadLetter | None
    source: str | None = None
    """The record's ``source``: with the key id and the event id, its identity in the
    ingress's dedup window (ids are only unique per producer)."""
    errors: tuple[dict[str, Any], ...] = ()
    """Every schema error of a 422 rejection, found while checking (in the thread)."""


def check_record(index: int, value: bytes, config: ValidationConfig, now_ms: float) -> Checked:
    out = validate_record(RawRecord(value, {"index": index}, now_ms), config)
    if isinstance(out, DeadLetter):
        errors: tuple[dict[str, Any], ...] = ()
        # A refused repair is not tried again for the error list: it already cost its
        # budget once. Anything else is cheap to validate a second time.
        if rejection_status(out) == 422 and out.reason != Reason.INVALID_GEOMETRY:
            errors = tuple(field_errors(value, config.geometry))
        return Checked(index, value, None, None, out, errors=errors)
    event_id, key, source = _identity(out)
    return Checked(index, value, event_id, key, None, source)


def check_records(
    values: Sequence[bytes],
    config: ValidationConfig,
    now_ms: float,
    deadline_s: float = CHECK_DEADLINE_S,
) -> list[Checked]:
    """Check a request's records, giving up on the rest once ``deadline_s`` has passed.

    Blocking (pydantic, GEOS, a repair worker): the ingress runs it in a thread, so
    the event loop (``/healthz`` included) goes on answering meanwhile."""
    deadline = time.monotonic() + deadline_s
    out = []
    for i, value in enumerate(values):
        if time.monotonic() > deadline:
            late = DeadLetter(
                Reason.CHECK_DEADLINE,
                f"checking the request took over {deadline_s:g} s; record {i} and later"
                " were not checked, send fewer or simpler records a request",
                b"",
                {"index": i},
                now_ms,
            )
            out.append(Checked(i, value, None, None, late))
        else:
            out.append(check_record(i, value, config, now_ms))
    return out


def _identity(event: TileEvent | FanOutEvent) -> tuple[str, str, str]:
    if isinstance(event, TileEvent):
        return event.event_id, event.key, event.source
    m = event.model
    if m.kind == "feature":
        return m.event_id, f"feature:{m.source}:{m.feature_id}", m.source
    return m.event_id, f"sensor:{m.source}:{m.sensor_id}", m.source


def rejection_status(dead: DeadLetter) -> int:
    return _STATUS.get(dead.reason, 422)


def rejection_result(checked: Checked, rules: GeometryRules) -> dict[str, Any]:
    """The per-record answer for a rejected record: status, reason code, field errors.

    No validation here: it runs on the event loop, the errors were found by
    :func:`check_record`. (``rules`` is kept for the callers' signature.)"""
    dead = checked.rejection
    assert dead is not None
    result: dict[str, Any] = {
        "index": checked.index,
        "status": rejection_status(dead),
        "result": "rejected",
        "reason": dead.reason,
        "field": dead.field,
        "message": dead.error,
    }
    if checked.errors:
        result["errors"] = list(checked.errors)
    return result


def field_errors(value: bytes, rules: GeometryRules) -> list[dict[str, Any]]:
    """Every schema error of a record (the dead letter names only the first)."""
    try:
        EVENT_ADAPTER.validate_json(value, context=rules)
    except ValidationError as e:
        out = []
        for err in e.errors(include_url=False)[:MAX_FIELD_ERRORS]:
            loc = [str(p) for p in err["loc"]]
            if loc and loc[0] in ("tile", "feature", "telemetry"):
                loc = loc[1:]  # the union's tag, not a field of the record
            field = (err.get("ctx") or {}).get("field") or ".".join(loc) or None
            out.append({"field": field, "type": err["type"], "message": err["msg"]})
        return out
    except (RecursionError, MemoryError, ValueError):
        return []
    return []
