"""Stages 1-2: decode, verify and validate raw records.

Bytes become a :class:`~tilepipe.records.TileEvent` (``kind: "tile"``), a
:class:`~tilepipe.records.FanOutEvent` (features and telemetry, which the
enrich stage expands to tiles) or a :class:`~tilepipe.records.DeadLetter`
carrying a stable reason code, the offending field and the record's origin.
Nothing raised by a record escapes this stage: whatever a producer sends, the
flow goes on. No Bytewax here (its step is :func:`operators.steps.validate`),
so the HTTP ingress runs :func:`validate_record` without loading the dataflow
runtime. Stage numbers: ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from operators.fastpath import fast_tile_event
from tilepipe.reasons import Reason
from tilepipe.records import DeadLetter, FanOutEvent, RawRecord, TileEvent, clip
from tilepipe.signing import record_signature_problem
from tilepipe.tiles import tile_key
from tilepipe.timeutil import parse_event_time
from tilepipe.versions import version_key
from tilepipe.wire import EVENT_ADAPTER, OWN_REASONS, GeometryRules, TileEventIn, error_message

log = logging.getLogger(__name__)


# pydantic's built-in error types, folded into the DLQ's reason codes.
_REASONS = {
    "json_invalid": Reason.INVALID_JSON,
    "json_type": Reason.INVALID_JSON,
    "dict_type": Reason.NOT_AN_OBJECT,
    "model_type": Reason.NOT_AN_OBJECT,
    "model_attributes_type": Reason.NOT_AN_OBJECT,
    "missing": Reason.MISSING_FIELD,
    "union_tag_not_found": Reason.MISSING_FIELD,
    "union_tag_invalid": Reason.UNKNOWN_KIND,
}


@dataclass(frozen=True)
class ValidationConfig:
    max_record_bytes: int = 1 << 20
    max_future_ms: int = 5 * 60 * 1000
    hmac_secrets: Mapping[str, bytes] | None = None
    """Active secrets by key id; when set, every record must carry a valid signature."""
    signature_max_age_ms: int | None = None
    """With secrets: a record signed longer than this before it was read is refused."""
    geometry: GeometryRules = field(default_factory=GeometryRules)


def _dead(rec: RawRecord, reason: Reason, error: str, field: str | None = None) -> DeadLetter:
    raw = rec.value if rec.value is not None else b""
    return DeadLetter(
        reason, clip(error), raw, rec.origin, rec.received_ms, clip(field) if field else field
    )


def _from_validation_error(rec: RawRecord, exc: ValidationError) -> DeadLetter:
    first = exc.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] in ("tile", "feature", "telemetry"):
        loc = loc[1:]  # the union's tag, not a field of the record
    etype = first["type"]
    reason = _REASONS.get(etype)
    if reason is None:
        if etype in OWN_REASONS:
            reason = Reason(etype)
        elif etype.endswith(("_type", "_parsing")):
            reason = Reason.INVALID_TYPE
        else:
            reason = Reason.INVALID_VALUE
    ctx_field = (first.get("ctx") or {}).get("field")
    if ctx_field:
        loc = [ctx_field]
    if reason == Reason.MISSING_FIELD and etype == "union_tag_not_found":
        loc = ["kind"]
    field = ".".join(loc) or None
    more = exc.error_count() - 1
    msg = error_message(first) + (
        f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    )
    return _dead(rec, reason, msg, field)


def to_tile_event(model: TileEventIn, received_ms: float) -> TileEvent:
    layers = tuple(model.layers) if model.layers is not None else None
    return TileEvent(
        key=tile_key(model.z, model.x, model.y),
        tms=model.tms,
        z=model.z,
        x=model.x,
        y=model.y,
        version=model.version,
        vkey=version_key(model.version),
        ts_ms=parse_event_time(model.ts),
        event_id=model.event_id,
        source=model.source,
        layers=layers,
        received_ms=received_ms,
    )


def validate_record(
    rec: RawRecord, config: ValidationConfig
) -> TileEvent | FanOutEvent | DeadLetter:
    """Decode, verify and validate one record; never raises for bad input."""
    body = rec.value
    if body is None:
        return _dead(rec, Reason.EMPTY_RECORD, "record has no value (a tombstone?)")
    size = rec.truncated_from or len(body)
    if size > config.max_record_bytes:
        return _dead(
            rec,
            Reason.TOO_LARGE,
            f"record is {size} bytes, over the {config.max_record_bytes}-byte limit",
        )
    if config.hmac_secrets:
        problem = record_signature_problem(
            config.hmac_secrets,
            rec.headers,
            body,
            read_ms=rec.received_ms,
            max_age_s=None
            if config.signature_max_age_ms is None
            else config.signature_max_age_ms / 1000,
        )
        if problem is not None:
            return _dead(rec, Reason.BAD_SIGNATURE, problem)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return _dead(
            rec, Reason.INVALID_ENCODING, f"record is not UTF-8: {e.reason} at byte {e.start}"
        )
    fast = fast_tile_event(body, rec.received_ms)
    if fast is not None:
        return _future_dated(rec, fast, config) or fast
    try:
        model = EVENT_ADAPTER.validate_json(body, context=config.geometry)
    except ValidationError as e:
        return _from_validation_error(rec, e)
    except (RecursionError, MemoryError, ValueError) as e:  # pathological nesting
        return _dead(rec, Reason.INVALID_JSON, f"record could not be parsed: {type(e).__name__}")
    event: TileEvent | FanOutEvent
    if isinstance(model, TileEventIn):
        event = to_tile_event(model, rec.received_ms)
    else:
        event = FanOutEvent(
            model, version_key(model.version), parse_event_time(model.ts), rec.received_ms, rec
        )
    return _future_dated(rec, event, config) or event


def _future_dated(
    rec: RawRecord, event: TileEvent | FanOutEvent, config: ValidationConfig
) -> DeadLetter | None:
    if event.ts_ms <= rec.received_ms + config.max_future_ms:
        return None
    return _dead(
        rec,
        Reason.FUTURE_EVENT,
        f"event time is {(event.ts_ms - rec.received_ms) / 1000:.0f} s in the future,"
        f" over the {config.max_future_ms / 1000:.0f} s allowed (check the producer's clock)",
        "ts",
    )


def validate_batch(
    records: Iterable[RawRecord], config: ValidationConfig
) -> list[TileEvent | FanOutEvent | DeadLetter]:
    out: list[TileEvent | FanOutEvent | DeadLetter] = []
    for rec in records:
        try:
            out.append(validate_record(rec, config))
        except Exception as e:  # a bug of ours must not lose the record either
            log.exception("validate: unexpected error on a record from %s", rec.origin)
            out.append(_dead(rec, Reason.INTERNAL_ERROR, f"{type(e).__name__}: {e}"))
    return out
